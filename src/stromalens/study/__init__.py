"""``stromalens run``: every stage of a study on a cohort, resumable (``STUDY/manifest.json``).

:mod:`.runner` holds the stage graph, the content hashing and the manifest; :mod:`.stages` one
function per stage; :mod:`.summary` the end-of-run summary. The layout of a study folder is in
``docs/run_directory.md``.
"""

from .runner import Stage, StudyResult, read_manifest, run_study, stage_digests
from .summary import print_summary, summarise

__all__ = [
    "Stage",
    "StudyResult",
    "print_summary",
    "read_manifest",
    "run_study",
    "stage_digests",
    "summarise",
]
