"""Issue 23: EfficientAD and Student-Teacher train the same networks whatever the order, batching or kind of the fit stream."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ad_distill.efficientad import EfficientAD
from ad_distill.student_teacher import StudentTeacher
from adcore.testing import make_normal_images

TINY_EAD = {"input_size": 64, "teacher_channels": 8, "width": 0.125, "teacher_steps": 2, "teacher_batch_size": 8,
            "train_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "use_cache": False}
TINY_ST = {"input_size": 64, "receptive_fields": (17,), "descriptor_dim": 8, "width": 0.125, "num_students": 2,
           "teacher_steps": 2, "teacher_batch_size": 8, "train_steps": 4, "batch_size": 4, "learning_rate": 1e-3,
           "use_cache": False}


def _equal(one: dict, two: dict) -> bool:
    return one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)


def test_efficientad_and_student_teacher_ignore_order_batching_and_stream_kind() -> None:
    images = make_normal_images(10, (64, 64), seed=4)
    backwards = images.flip(0)
    for cls, params, trained in ((EfficientAD, TINY_EAD, ("teacher_", "student_", "autoencoder_")),
                                 (StudentTeacher, TINY_ST, ("teachers_", "students_"))):
        first = cls(**params).fit(DataLoader(TensorDataset(images), batch_size=4))
        second = cls(**params).fit([backwards[i:i + 3] for i in range(0, 10, 3)])
        for name in trained:
            assert _equal(getattr(first, name).state_dict(), getattr(second, name).state_dict()), (cls.__name__, name)
