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


def test_the_class_comes_from_class_folders_or_file_names_as_the_folder_is_laid_out(tmp_path, capsys):
    """ImageNet's layout (train/cat/x.jpg, valid/dog/y.jpg) and the book's pets names (Abyssinian_1.jpg), each
    read without --label-from; an explicit --label-from is kept."""
    folders = tmp_path / "folders"
    for split, label, name in (("train", "cat", "x1.jpg"), ("train", "dog", "x2.jpg"), ("valid", "dog", "y.jpg")):
        write_image(folders / split / label / name)
    files, label_func, source = resolve_image_files(ImageFolderOptions(data=str(folders)))
    assert [label_func(f) for f in files] == ["cat", "dog", "dog"] and "class = parent folder" in source
    assert "class = parent folder: the images sit in 2 folders" in capsys.readouterr().out

    named = tmp_path / "named"
    for name in ("Abyssinian_1.jpg", "Abyssinian_2.jpg", "Bengal_1.jpg"):
        write_image(named / "part" / name)
        write_image(named / "other" / name)  # in folders too, but every name matches the pattern
    files, label_func, _ = resolve_image_files(ImageFolderOptions(data=str(named)))
    assert sorted({label_func(f) for f in files}) == ["Abyssinian", "Bengal"]

    flat = tmp_path / "flat"
    write_image(flat / "a.jpg"), write_image(flat / "b.jpg")
    for options in (ImageFolderOptions(data=str(folders), label_from="filename"),
                    ImageFolderOptions(data=str(flat))):  # no folders to read a class from
        files, label_func, _ = resolve_image_files(options)
        with pytest.raises(PipelineError, match="does not match the label pattern"):
            [label_func(f) for f in files]


def test_train_and_valid_folders_are_the_split_and_unseen_validation_classes_are_left_out(tmp_path, capsys):
    from fastai.data.transforms import RandomSplitter

    from pipelines.vision import training_split

    data = tmp_path / "data"
    layout = [("train", "cat", 3), ("train", "dog", 3), ("val", "cat", 2), ("val", "dog", 1), ("val", "fox", 1),
              ("test", "cat", 2)]
    for split, label, count in layout:
        for n in range(count):
            write_image(data / split / label / f"{n}.png")
    options = ImageFolderOptions(data=str(data), label_from="folder")
    files, label_func, _ = resolve_image_files(options)
    kept, labels, (train, valid) = training_split(options, files, [label_func(f) for f in files])
    assert sorted(kept[i].parent.parent.name for i in train) == ["train"] * 6
    assert sorted((kept[i].parent.parent.name, labels[i]) for i in valid) == [("val", "cat"), ("val", "cat"), ("val", "dog")]
    said = capsys.readouterr().out
    assert "left out 2 image(s) outside the train and valid folders (test/)" in said
    assert "left out 1 validation image(s) of class(es) no training image has: 'fox'" in said

    flat = [data / "train" / "cat" / "0.png"] * 10  # no valid folder among them: fastai's random 20%, its order
    split = training_split(ImageFolderOptions(data=str(tmp_path / "elsewhere"), seed=3), flat, ["a", "b"] * 5)[2]
    assert [list(part) for part in split] == [list(part) for part in RandomSplitter(0.2, seed=3)(flat)]


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


def test_masks_named_otherwise_than_camvid_are_found(tmp_path):
    """Many segmentation sets keep masks in masks/, named like their image with a lossless .png."""
    from pipelines.tasks.unet import camvid_label_func

    for stem in ("one", "two"):
        write_image(tmp_path / "images" / f"{stem}.jpg")
        write_image(tmp_path / "masks" / f"{stem}.png", "L")
    (tmp_path / "codes.txt").write_text("background\nthing\n")
    assert [f.name for f in check_camvid_layout(tmp_path)] == ["one.jpg", "two.jpg"]
    assert camvid_label_func(tmp_path)(tmp_path / "images" / "two.jpg") == tmp_path / "masks" / "two.png"
    write_image(tmp_path / "images" / "three.jpg")
    with pytest.raises(PipelineError, match=r"1 images have no mask, e.g. three.jpg needs masks/three.png \(mask names "
                                            r"looked for in labels/, masks/: three_P.jpg, three.jpg, three.png"):
        check_camvid_layout(tmp_path)


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
