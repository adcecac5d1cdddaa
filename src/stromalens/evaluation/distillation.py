"""Distillation (analysis 10): how much of the fusion teacher the MRI-only student keeps, and
what it costs to run each.

retention = macro-r(student) / macro-r(teacher), both out-of-fold; calibration slope of each
(observed on predicted, mean over targets); speed ratio = teacher seconds per patient / student
seconds per patient; memory ratio = student peak MB / teacher peak MB (``probes.inference_cost``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fidelity import calibration, macro_r


def distillation_table(predictions: pd.DataFrame, cost: dict) -> pd.DataFrame:
    teacher = predictions[predictions["model"] == "fusion"]
    student = predictions[predictions["model"] == "mri_student"]
    if teacher.empty or student.empty:
        return pd.DataFrame(columns=["metric", "value"])

    def slope(frame):
        return float(
            np.nanmean(
                [
                    calibration(p["y_true"].to_numpy(float), p["y_pred"].to_numpy(float))[0]
                    for _, p in frame.groupby("target")
                ]
            )
        )

    r_t, r_s = macro_r(teacher), macro_r(student)
    values = {
        "teacher_macro_r": r_t,
        "student_macro_r": r_s,
        "retention": r_s / r_t if r_t else np.nan,
        "teacher_calibration_slope": slope(teacher),
        "student_calibration_slope": slope(student),
    }
    values.update(cost)
    if cost.get("student_seconds_per_patient"):
        values["speed_ratio"] = (
            cost["teacher_seconds_per_patient"] / cost["student_seconds_per_patient"]
        )
    if cost.get("teacher_peak_mb"):
        values["memory_ratio"] = cost["student_peak_mb"] / cost["teacher_peak_mb"]
    return pd.DataFrame({"metric": list(values), "value": list(values.values())})
