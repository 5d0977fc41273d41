"""Hook module of ad-distill: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry) -> None:
    """EfficientAD and Student-Teacher; ``quick_params`` are a tiny smoke configuration at 64 px."""
    registry.add(
        "efficientad",
        "ad_distill.efficientad:EfficientAD",
        category="distillation",
        paper="Batzner, Heckler, König, EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level Latencies, WACV 2024",
        paradigm="student-teacher knowledge distillation + autoencoder",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=True,
        description="PDN teacher distilled offline from a pretrained backbone, student + autoencoder, quantile-normalised local/global maps",
        quick_params={"input_size": 64, "teacher_channels": 16, "width": 0.125, "teacher_steps": 4,
                      "teacher_batch_size": 8, "train_steps": 8, "batch_size": 4, "learning_rate": 1e-3,
                      "use_cache": False},
    )
    registry.add(
        "student_teacher",
        "ad_distill.student_teacher:StudentTeacher",
        category="distillation",
        paper="Bergmann, Fauser, Sattlegger, Steger, Uninformed Students: Student-Teacher Anomaly Detection with Discriminative Latent Embeddings, CVPR 2020",
        paradigm="student-teacher knowledge distillation (ensemble)",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=True,
        description="descriptor teacher distilled offline at receptive fields 17/33/65, student ensemble, regression error + predictive variance",
        quick_params={"input_size": 64, "receptive_fields": (17,), "descriptor_dim": 16, "width": 0.125,
                      "num_students": 2, "teacher_steps": 4, "teacher_batch_size": 8, "train_steps": 8,
                      "batch_size": 4, "learning_rate": 1e-3, "use_cache": False},
    )
