"""Tables of runs: collect run dirs, group them, summarise over seeds, render (docs/tables.md).

``crossdistill-table <run or multirun dirs...>`` aggregates finished runs;
``crossdistill-table run <spec>`` runs a table spec (``conf/table/<name>.yaml``) first.
"""
