"""Serving-side preprocessing (numpy + Pillow) against fastai's own `test_dl` tensors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.images import InvalidImageError, decode_image, image_to_tensor
from tests.helpers import image_bytes


def _photo(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 60, (height, width, 3))
    pixels = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def raw_files(folder: Path) -> dict[str, Path]:
    """Files of many kinds, as a client would upload them."""
    rgba = _photo(50, 40, 1).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 50, dtype=np.uint8), (40, 1))))
    made = {
        "rgba.png": image_bytes(rgba, "PNG"),
        "greyscale.png": image_bytes(_photo(64, 64, 2, "L"), "PNG"),
        "palette.png": image_bytes(_photo(45, 45, 3).convert("P", palette=Image.ADAPTIVE, colors=32), "PNG"),
        "portrait.jpg": image_bytes(_photo(30, 70, 4), "JPEG", quality=90),
        "landscape.jpg": image_bytes(_photo(120, 41, 5), "JPEG", quality=90),
        "tiny.png": image_bytes(_photo(5, 3, 6), "PNG"),
        "large.jpg": image_bytes(_photo(2400, 1800, 7), "JPEG", quality=85),
        "cmyk.jpg": image_bytes(_photo(60, 50, 8).convert("CMYK"), "JPEG"),
        "greyscale_alpha.png": image_bytes(_photo(33, 47, 9, "LA"), "PNG"),
        "odd.bmp": image_bytes(_photo(37, 29, 10), "BMP"),
    }
    paths = {}
    for name, data in made.items():
        path = folder / name
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def siamese_dls(digits_folder):
    from pipelines.registry import get_task
    from tests.helpers import TINY_SIAMESE_OPTIONS

    task = get_task("siamese")
    options = dict(TINY_SIAMESE_OPTIONS, data=str(digits_folder), image_size=48)
    return task, task.prepare_data(task.resolve(task.Options.from_mapping(options))).dls


def test_serving_tensors_equal_fastai_test_dl(siamese_dls, tmp_path):
    task, dls = siamese_dls
    files = raw_files(tmp_path)
    spec = task.preprocessing(type("L", (), {"dls": dls})())
    names = sorted(files)
    pairs = [(files[a], files[b]) for a, b in zip(names, names[1:] + names[:1])]
    first, second = task.fastai_pair_tensors(dls, pairs)
    assert first.shape == (len(pairs), 3, 48, 48)
    for (path_a, path_b), expected_a, expected_b in zip(pairs, first, second):
        for path, expected in ((path_a, expected_a), (path_b, expected_b)):
            served = image_to_tensor(decode_image(path.read_bytes(), "image"), spec)
            assert served.dtype == np.float32
            np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0, err_msg=path.name)


def test_crop_is_centred_not_squashed(siamese_dls, tmp_path):
    """A wide image whose edges are red and centre blue: fastai's validation resize crops the red away."""
    task, dls = siamese_dls
    pixels = np.zeros((40, 120, 3), np.uint8)
    pixels[:, :40, 0] = pixels[:, 80:, 0] = 255
    pixels[:, 40:80, 2] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    spec = task.preprocessing(type("L", (), {"dls": dls})())
    served = image_to_tensor(decode_image(path.read_bytes(), "image"), spec)
    red, blue = served[0] * 0.229 + 0.485, served[2] * 0.225 + 0.406
    assert blue.mean() > 0.95 and red.mean() < 0.05


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image format"),
    ],
)
def test_undecodable_uploads_name_the_field_and_problem(data, problem):
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data, "image_a")
    assert caught.value.field == "image_a"
    assert problem in str(caught.value)
    assert str(caught.value).startswith("image_a: ")


def test_png_with_corrupt_pixel_data_is_rejected():
    data = bytearray(image_bytes(_photo(64, 64), "PNG"))
    start = data.index(b"IDAT") + 8
    data[start:start + 200] = bytes(200)
    with pytest.raises(InvalidImageError, match="image_a: the image could not be decoded"):
        decode_image(bytes(data), "image_a")


def test_truncated_jpeg_is_rejected():
    data = image_bytes(_photo(200, 150), "JPEG", quality=95)
    with pytest.raises(InvalidImageError, match="image_b: the image could not be decoded"):
        decode_image(data[: len(data) // 2], "image_b")


# Recipes whose validation pipeline resamples batches (the others are item-level only).
RESAMPLING_RECIPES = ("book presizing", "aug_transforms(size) after a squish", "RandomResizedCropGPU",
                      "aug_transforms() at 224 (resamples at its own size)",
                      "RandomResizedCrop and aug_transforms() (the book's chapter 2)")
RECIPES = (*RESAMPLING_RECIPES, "Resize pad, zeros", "Resize pad, reflection", "Resize pad, border", "no Normalize",
           "RandomResizedCrop, not square, bicubic", "Resize squish, bicubic", "Resize crop, nearest")
CROPPED_TO = {"RandomResizedCrop and aug_transforms() (the book's chapter 2)": (48, 48),
              "RandomResizedCrop, not square, bicubic": (40, 58)}


def _recipes():
    from fastai.vision.all import RandomResizedCrop, RandomResizedCropGPU, Resize, aug_transforms
    from PIL import Image as PILImage

    return {
        "RandomResizedCrop and aug_transforms() (the book's chapter 2)":
            ([RandomResizedCrop(48, min_scale=0.5)], aug_transforms()),
        "RandomResizedCrop, not square, bicubic":
            ([RandomResizedCrop((40, 58), min_scale=0.3, resamples=(PILImage.BICUBIC, PILImage.NEAREST))], []),
        "book presizing": ([Resize(96)], aug_transforms(size=48, min_scale=0.75)),
        "aug_transforms(size) after a squish": ([Resize((60, 90), method="squish")], aug_transforms(size=(32, 40))),
        "RandomResizedCropGPU": ([Resize((50, 80))], [RandomResizedCropGPU(36)]),
        "aug_transforms() at 224 (resamples at its own size)": ([Resize(224)], aug_transforms()),
        "Resize squish, bicubic": ([Resize((36, 52), method="squish", resamples=(PILImage.BICUBIC, PILImage.NEAREST))], []),
        "Resize crop, nearest": ([Resize(40, resamples=(PILImage.NEAREST, PILImage.NEAREST))], []),
        "Resize pad, zeros": ([Resize((40, 56), method="pad", pad_mode="zeros")], []),
        "Resize pad, reflection": ([Resize(40, method="pad")], []),
        "Resize pad, border": ([Resize((30, 50), method="pad", pad_mode="border")], []),
        "no Normalize": ([Resize(32)], []),
    }


@pytest.mark.parametrize("recipe", RECIPES)
def test_classifier_recipes_are_served_as_fastai_computes_them(recipe, tmp_path):
    """Each way users resize and normalise for a vision_learner, served (numpy + Pillow) as fastai's
    validation pipeline computes it, within the classifier's preprocessing tolerance."""
    import torch
    from fastai.vision.all import ImageDataLoaders, Normalize, imagenet_stats

    from pipelines.registry import get_task
    from pipelines.vision import fastai_image_tensors

    item_tfms, batch_tfms = _recipes()[recipe]
    if recipe != "no Normalize":
        batch_tfms = [*batch_tfms, Normalize.from_stats(*imagenet_stats)]
    files = [path for name, path in raw_files(tmp_path).items() if name != "tiny.png"]
    dls = ImageDataLoaders.from_path_func(tmp_path, files, lambda path: Path(path).stem, valid_pct=0.5, seed=0,
                                          item_tfms=item_tfms, batch_tfms=batch_tfms, bs=2)
    task = get_task("classifier")
    spec = task.preprocessing(type("L", (), {"dls": dls, "model": torch.nn.Conv2d(3, 8, 3)})())
    assert (spec.batch_resize is not None) == (recipe in RESAMPLING_RECIPES)
    assert spec.center_crop == CROPPED_TO.get(recipe)
    if recipe in CROPPED_TO:
        assert spec.model_size == CROPPED_TO[recipe]
    for path, expected in zip(files, fastai_image_tensors(dls, files)):
        served = image_to_tensor(decode_image(path.read_bytes(), "image"), spec)
        assert served.shape == expected.shape, path.name
        np.testing.assert_allclose(served, expected, atol=task.onnx_config.tolerance.preprocessing_atol, rtol=0,
                                   err_msg=path.name)


def test_siamese_refuses_batch_resizing_that_changes_the_size(tmp_path):
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms

    from pipelines.errors import PipelineError
    from pipelines.vision import image_preprocessing

    files = list(raw_files(tmp_path).values())
    dls = ImageDataLoaders.from_path_func(tmp_path, files, lambda path: Path(path).stem, valid_pct=0.5, seed=0,
                                          item_tfms=Resize(64), batch_tfms=aug_transforms(size=32), bs=2)
    with pytest.raises(PipelineError, match="resize images batch by batch"):
        image_preprocessing(dls)
    assert image_preprocessing(dls, batch_resizing=True).model_size == (32, 32)


def test_aug_transforms_without_resize_are_served_at_each_image_size(tmp_path):
    """A U-Net or Siamese learner without an item Resize and with aug_transforms(): fastai resamples each
    image at its own size at validation (float rounding: 4e-5 at 320x240); the service does the same for any
    size, small ones by one matrix per axis, large ones by taps."""
    from fastai.vision.all import ImageDataLoaders, Normalize, aug_transforms, imagenet_stats

    from pipelines.registry import get_task
    from pipelines.vision import fastai_image_tensors, image_preprocessing
    from services.images import DENSE_RESAMPLING_PIXELS

    files = list(raw_files(tmp_path).values())
    dls = ImageDataLoaders.from_path_func(tmp_path, files, lambda path: Path(path).stem, valid_pct=0.5, seed=0,
                                          batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)], bs=1)
    spec = image_preprocessing(dls)
    assert spec.resize_method == "none" and len(spec.batch_resize.steps) == 1 and not spec.batch_resize.resizes
    tolerance = get_task("unet").onnx_config.tolerance.preprocessing_atol
    sizes = []
    for path, expected in zip(files, fastai_image_tensors(dls, files)):
        served = image_to_tensor(decode_image(path.read_bytes(), "image"), spec)
        sizes.append(served.shape[1] * served.shape[2])
        np.testing.assert_allclose(served, expected, atol=tolerance, rtol=0, err_msg=path.name)
    assert min(sizes) <= DENSE_RESAMPLING_PIXELS < max(sizes)
    # a 1x1 upload (fastai's _grid_sample itself divides by zero on it): the identity, not a server error
    pixel = image_to_tensor(Image.new("RGB", (1, 1), (120, 30, 200)), spec)
    mean, std = (np.array(stats, np.float32) for stats in imagenet_stats)
    np.testing.assert_allclose(pixel[:, 0, 0], (np.array([120, 30, 200], np.float32) / 255 - mean) / std, atol=1e-6)


def test_a_grey_image_classifier_takes_one_channel(tmp_path):
    """`ImageBlock(cls=PILImageBW)` with `vision_learner(..., n_in=1)` (MNIST-like data): the model takes one
    channel, so the service decodes uploads of any mode to grey, as fastai's PILImageBW.create does."""
    from fastai.vision.all import (
        CategoryBlock, DataBlock, ImageBlock, PILImageBW, RandomSplitter, Resize, resnet18, vision_learner,
    )

    from pipelines.registry import get_task
    from pipelines.vision import fastai_image_tensors

    files = list(raw_files(tmp_path).values())
    dls = DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock), get_y=lambda path: Path(path).stem,
                    splitter=RandomSplitter(seed=0), item_tfms=Resize(28)).dataloaders(files, bs=2)
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1)
    task = get_task("classifier")
    spec = task.preprocessing(learn)
    assert spec.color_mode == "L" and spec.mean == [0.0] and task.example_inputs(learn)[0].shape[1] == 1
    for path, expected in zip(files, fastai_image_tensors(dls, files, "L")):
        served = image_to_tensor(decode_image(path.read_bytes(), "image", spec.color_mode), spec)
        assert served.shape == expected.shape == (1, 28, 28), path.name
        np.testing.assert_allclose(served, expected, atol=task.onnx_config.tolerance.preprocessing_atol, rtol=0,
                                   err_msg=path.name)


def test_a_unet_that_resizes_on_the_batch_as_fastais_tutorial_in_colour_and_grey(tmp_path):
    """fastai's segmentation tutorial: `DataBlock(blocks=(ImageBlock, MaskBlock(codes)), ...,
    batch_tfms=aug_transforms(size=(120, 160)))`, no item Resize: every image is resampled to the model's size
    at validation; the service does the same at any upload size (and maps the mask back, as for Resize)."""
    import torch
    from fastai.vision.all import (
        DataBlock, ImageBlock, MaskBlock, PILImageBW, RandomResizedCropGPU, RandomSplitter, Resize, aug_transforms,
    )

    from pipelines.errors import PipelineError
    from pipelines.registry import get_task
    from pipelines.vision import fastai_image_tensors

    files = [path for name, path in raw_files(tmp_path).items() if name != "large.jpg"]
    for path in files:
        Image.new("L", Image.open(path).size).save(tmp_path / f"{path.stem}_mask.png")

    def learner(image_block=ImageBlock, channels=3, **transforms):
        block = DataBlock(blocks=(image_block, MaskBlock(["background", "thing"])), splitter=RandomSplitter(seed=0),
                          get_y=lambda path: tmp_path / f"{Path(path).stem}_mask.png", **transforms)
        return type("Learner", (), {"dls": block.dataloaders(files, bs=1), "model": torch.nn.Conv2d(channels, 8, 3)})()

    task = get_task("unet")
    # the second: grey images (medical scans), ImageBlock(cls=PILImageBW) and unet_learner(..., n_in=1)
    for learn in (learner(batch_tfms=aug_transforms(size=(24, 32))),
                  learner(ImageBlock(cls=PILImageBW), 1, batch_tfms=aug_transforms(size=(24, 32)))):
        spec = task.preprocessing(learn)
        assert spec.resize_method == "none" and spec.model_size == (24, 32)
        assert task.example_inputs(learn)[0].shape[1:] == (len(spec.color_mode), 24, 32)
        for path, expected in zip(files, fastai_image_tensors(learn.dls, files, spec.color_mode)):
            served = image_to_tensor(decode_image(path.read_bytes(), "image", spec.color_mode), spec)
            np.testing.assert_allclose(served, expected, atol=task.onnx_config.tolerance.preprocessing_atol, rtol=0,
                                       err_msg=path.name)
    with pytest.raises(PipelineError, match="serves batch resizing without a crop only"):
        task.preprocessing(learner(item_tfms=Resize((40, 80)), batch_tfms=[RandomResizedCropGPU(24)]))


@pytest.mark.parametrize("method", ["crop", "pad", "squish", "RandomResizedCrop"])
@pytest.mark.parametrize("upload_size", [(150, 100), (90, 140), (64, 64)])
def test_a_unet_mask_is_mapped_back_where_fastais_resize_took_it_from(method, upload_size):
    """A mask the model gives at the Resize's size lands on the upload where fastai's Resize took those pixels
    from: the class map of an upload, resized as fastai resizes a mask (PILMask, nearest), comes back on the
    upload's own pixels; what a crop cut off is NOT_SEEN, a pad's padding is dropped."""
    from fastai.vision.all import PILMask, RandomResizedCrop, Resize

    from pipelines.vision import validation_random_resized_crop
    from services.manifest import ImagePreprocessing
    from services.unet import NOT_SEEN, mask_on_upload

    width, height = upload_size
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    classes = (1 + 3 * (rows * 3 // height) + columns * 3 // width).astype(np.uint8)  # a 3x3 grid of classes 1..9
    stats = dict(mean=[0.0] * 3, std=[1.0] * 3)
    if method == "RandomResizedCrop":
        transform = RandomResizedCrop(64)
        squish, center_crop = validation_random_resized_crop(transform)
        spec = ImagePreprocessing(height=squish.size[1], width=squish.size[0], resize_method="squish",
                                  center_crop=center_crop, **stats)
    else:
        transform = Resize((64, 64), method=method, pad_mode="zeros")
        spec = ImagePreprocessing(height=64, width=64, resize_method=method, pad_mode="zeros", **stats)
    seen_by_model = np.asarray(transform(PILMask.create(Image.fromarray(classes)), split_idx=1))

    placed = mask_on_upload(seen_by_model, width, height, spec)

    assert placed.shape == (height, width)
    seen = placed != NOT_SEEN
    if method == "crop":  # the centred square of the shorter side: the rest was never shown to the model
        side = min(width, height)
        expected_seen = np.zeros_like(seen)
        expected_seen[(height - side) // 2:(height - side) // 2 + side, (width - side) // 2:(width - side) // 2 + side] = True
        np.testing.assert_array_equal(seen, expected_seen)
    elif method == "RandomResizedCrop":  # the centre 64x64 of the image squished to 80x80: (64 / 80)^2 of it
        assert abs(seen.mean() - 0.64) < 0.03 and not seen[0].any() and not seen[:, -1].any()
    else:
        assert seen.all()
    # nearest resampling (64 pixels to 100-150 and back) moves borders by a pixel or two: away from the grid's
    # lines and the upload's edges (where a pad's padding ends) every pixel is its own class
    inside = np.ones_like(seen)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            inside &= np.roll(classes, (dy, dx), axis=(0, 1)) == classes
    inside[:3], inside[-3:], inside[:, :3], inside[:, -3:] = False, False, False, False
    np.testing.assert_array_equal(placed[seen & inside], classes[seen & inside])
    assert (seen & inside).sum() > 0.5 * seen.sum()
