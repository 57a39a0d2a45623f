"""Reader of the VoxCeleb on-disk layout (faces + voices), one module per job.

* :mod:`.layout`: the folder layout, :class:`~.layout.Utterance`, :class:`~.layout.VoxCelebIndex`;
* :mod:`.bad_files`: the ``on_bad_file`` policy (raise or skip and count);
* :mod:`.scan`: finding and checking every utterance and face frame;
* :mod:`.media`: reading one waveform or face image;
* :mod:`.splits`: identity lists and identity-disjoint splits;
* :mod:`.trials`: verification trial lists (read, generate, write);
* :mod:`.dataset`: :class:`~.dataset.FaceVoiceDataset`, paired samples as batch dicts;
* :mod:`.collate`: :func:`~.collate.pad_collate` for utterances of different lengths.
"""
