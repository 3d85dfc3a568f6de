"""The serving-side registry: every served task, in one list.

The all-models Bento (services/pipelines.py), its endpoints and `/models`, the bentofiles' checks, the
typed client's checks and the serving benchmark all derive from it. A new task is one module here with a
`SERVED = ServedTask(...)` (its handler, its public endpoints under /<task>/, its single-task service)
and one line below, beside its spec in pipelines/tasks/.
"""

from __future__ import annotations

from services import classifier, siamese, tabular, text, unet
from services.loading import ServedTask

SERVED_TASKS: dict[str, ServedTask] = {
    module.SERVED.name: module.SERVED for module in (siamese, unet, text, tabular, classifier)
}
