"""LightningModules: teacher training, the student-only baseline and distillation."""

from crossdistill.modules.distill import DistillModule
from crossdistill.modules.supervised import StudentModule, SupervisedModule, TeacherModule

__all__ = ["DistillModule", "StudentModule", "SupervisedModule", "TeacherModule"]
