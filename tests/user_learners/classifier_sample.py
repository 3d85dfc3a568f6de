"""What the classifier learner scripts leave beside each export.pkl: sample/<class>/ (images in class folders)
and expected.json (learn.predict's probabilities of each sample image), for the tests to compare the served
answers with. Imported by the scripts, which run as `python SCRIPT`, so from their own folder."""

import json
import shutil
from pathlib import Path


def write_sample(learn, images: list[Path], label_func, folder: Path) -> None:
    expected = {}
    for image in images:
        target = folder / "sample" / label_func(image.name) / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, target)
        expected[str(target)] = learn.predict(target)[2].tolist()
    (folder / "expected.json").write_text(json.dumps({"labels": [str(v) for v in learn.dls.vocab],
                                                      "probabilities": expected}))
