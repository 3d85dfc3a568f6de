"""Users' image folders hold files PIL cannot decode (a truncated download, a text file named .jpg): training
skips them with a line that names them and never deletes them; a --sample, which parity is judged on,
refuses them."""

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import PipelineError
from pipelines.tasks.unet import check_camvid_layout, check_masks_fit
from pipelines.vision import ImageFolderOptions, read_image_pairs, resolve_image_files, sample_image_files


def write_image(path, mode="RGB", size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:400]


@pytest.fixture
def folder_with_broken_files(tmp_path):
    data = tmp_path / "data"
    write_image(data / "cat" / "a.png", "L")
    write_image(data / "cat" / "b.PNG", "RGBA")
    write_image(data / "dog" / "c.JPG")
    write_image(data / "dog" / "d e.jpeg")
    (data / "dog" / "notes.jpg").write_text("not an image")
    (data / "cat" / "cut.jpg").write_bytes(truncated_jpeg())
    return data


def test_training_skips_unreadable_images_and_says_which(folder_with_broken_files, capsys):
    files, label_func, _ = resolve_image_files(ImageFolderOptions(data=str(folder_with_broken_files), label_from="folder"))
    assert sorted(f.name for f in files) == ["a.png", "b.PNG", "c.JPG", "d e.jpeg"]
    assert sorted(map(label_func, files)) == ["cat", "cat", "dog", "dog"]
    said = capsys.readouterr().out
    assert "skipped 2 unreadable image(s)" in said and "notes.jpg" in said and "cut.jpg" in said
    assert (folder_with_broken_files / "dog" / "notes.jpg").exists()  # never deleted


def test_a_folder_of_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "x.jpg").write_text("no")
    with pytest.raises(PipelineError, match="no readable images: 1 unreadable image"):
        resolve_image_files(ImageFolderOptions(data=str(tmp_path)))


def test_a_sample_with_an_unreadable_image_is_refused(folder_with_broken_files):
    with pytest.raises(PipelineError, match=r"--sample .*2 unreadable image\(s\)"):
        sample_image_files(folder_with_broken_files)
    assert len(sample_image_files(folder_with_broken_files / "cat" / "a.png")) == 1
    with pytest.raises(PipelineError, match="unreadable"):
        sample_image_files(folder_with_broken_files / "dog" / "notes.jpg")


def test_segmentation_pairs_with_an_unreadable_image_or_mask_are_skipped(tmp_path):
    for stem in ("one", "two", "three"):
        write_image(tmp_path / "images" / f"{stem}.png")
        write_image(tmp_path / "labels" / f"{stem}_P.png", "L")
    (tmp_path / "codes.txt").write_text("background\nthing\n")
    (tmp_path / "labels" / "two_P.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "images" / "three.png").write_bytes(b"")
    assert [f.name for f in check_camvid_layout(tmp_path)] == ["one.png"]


def camvid_folder(root, sizes, mask_value=1):
    for n, (height, width) in enumerate(sizes):
        write_image(root / "images" / f"s{n}.png", size=(width, height))
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2] = mask_value
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "labels" / f"s{n}_P.png")
    (root / "codes.txt").write_text("background\nthing\n")
    return check_camvid_layout(root)


def test_masks_that_fastai_would_fail_on_are_named_before_training(tmp_path):
    codes = ["background", "thing"]
    files = camvid_folder(tmp_path / "void", [(16, 24)] * 3, mask_value=255)
    with pytest.raises(PipelineError, match=r"3 mask\(s\) hold .* holds 255; codes.txt names 2 classes"):
        check_masks_fit(tmp_path / "void", files, codes, resized=False)

    files = camvid_folder(tmp_path / "mixed", [(16, 24), (16, 24), (20, 30)])
    with pytest.raises(PipelineError, match=r"differ in size \(16x24 \(2\), 20x30 \(1\)\).*--image-size 16x24"):
        check_masks_fit(tmp_path / "mixed", files, codes, resized=False)
    check_masks_fit(tmp_path / "mixed", files, codes, resized=True)  # --image-size resizes them all

    files = camvid_folder(tmp_path / "other", [(16, 24)] * 2)
    Image.fromarray(np.zeros((16, 25), np.uint8)).save(tmp_path / "other" / "labels" / "s1_P.png")
    with pytest.raises(PipelineError, match="s1.png is 16x24 but its mask s1_P.png is 16x25"):
        check_masks_fit(tmp_path / "other", files, codes, resized=True)


def test_a_siamese_sample_reads_same_strictly(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name)
    sample = tmp_path / "pairs.csv"
    sample.write_text("image_a,image_b,same\na.png,b.png,yes\na.png,a.png,1.0\nb.png,a.png,different\n")
    pairs, same = read_image_pairs(sample)
    assert len(pairs) == 3 and same.tolist() == [1, 1, 0]
    sample.write_text("image_a,image_b,same\na.png,b.png,1\na.png,a.png,\n")  # pandas reads 1.0 and NaN
    with pytest.raises(PipelineError, match="column `same` holds nan in data row 2"):
        read_image_pairs(sample)


def test_colour_masks_are_named_as_such(tmp_path):
    files = camvid_folder(tmp_path, [(16, 24)] * 2)
    colours = np.zeros((16, 24, 3), np.uint8)
    colours[:8] = (128, 0, 0)
    Image.fromarray(colours).save(tmp_path / "labels" / "s0_P.png")
    with pytest.raises(PipelineError, match="holds 38; .* It is an RGB image: a mask holds one class index per pixel"):
        check_masks_fit(tmp_path, files, ["background", "thing"], resized=False)
