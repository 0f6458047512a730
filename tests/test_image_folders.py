"""Format images: class folders and listings decoded with Pillow on the workers, the same shards on both engines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.config import PipelineConfig, parse_config
from pipelines.data.patches import PATCH_CLASSES, write_patch_folder
from pipelines.deep.shards import TensorShards, part_files
from pipelines.deep.stage import DeepStage, hand_off
from pipelines.errors import DataError
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.images import decode_image, list_images
from pipelines.ingest.stage import IngestStage
from pipelines.pipeline import run_pipeline


def folder_config(tmp_path: Path, data: Path, shape: list[int], *stages: dict, engine: str = "dask", **image) -> dict:
    """An image folder ingested into train/test (max 20 % rejected), then the given stages."""
    return {
        "name": "folder",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": engine, "partitions": 3},
        "dataset": {"name": "patches", "format": "images", "path": str(data), "image": {"shape": shape, **image}},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 3}, "max_rejected_fraction": 0.2},
            *stages,
        ],
    }


def reference(path: Path, shape: tuple[int, int, int], resize: str = "stretch") -> np.ndarray:
    """The file decoded in this process with Pillow itself: mode converted, resized with the bilinear filter."""
    with Image.open(path) as image:
        image = image.convert("RGB" if shape[2] == 3 else "L")
        h, w = shape[:2]
        if resize == "stretch":
            out = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR))
        elif resize == "crop":
            s = min(image.width / w, image.height / h)
            cw, ch = round(w * s), round(h * s)
            left, top = (image.width - cw) // 2, (image.height - ch) // 2
            out = np.asarray(image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR))
        else:
            s = min(w / image.width, h / image.height)
            nw, nh = min(w, round(image.width * s)), min(h, round(image.height * s))
            inner = np.asarray(image.resize((nw, nh), Image.Resampling.BILINEAR))
            out = np.zeros((h, w, *inner.shape[2:]), np.uint8)
            out[(h - nh) // 2 : (h - nh) // 2 + nh, (w - nw) // 2 : (w - nw) // 2 + nw] = inner
    return out.reshape(shape)


def written_rows(run, split: str) -> pd.DataFrame:
    """A written split's rows in partition order (the order of its tensor shards)."""
    return pd.concat([pd.read_parquet(p) for p in part_files(run.dir / "data" / split)], ignore_index=True)


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("patches")
    write_patch_folder(root, per_class=12, size=(20, 60), seed=1)
    return root


def test_folder_shards_are_identical_on_both_engines_and_equal_decoding_in_process(
    dask_engine, spark_engine, patches, tmp_path
):
    shape = (16, 24, 3)
    tensors = {}
    for engine in (dask_engine, spark_engine):
        config = PipelineConfig.model_validate(folder_config(tmp_path / engine.kind, patches, list(shape)))
        run, state = run_pipeline(config, engine=engine)
        ingest = state["ingest"]
        assert ingest.class_names == list(PATCH_CLASSES) and (ingest.read, ingest.rejected) == (48, 0)
        data = ingest.training_data(run.manifest["outputs"], "softmax")
        inputs = data.inputs  # the typed hand-off carries the class names; mirrors are not declared safe
        assert (inputs.class_names, inputs.classes, inputs.flips) == (PATCH_CLASSES, 4, False)
        assert inputs.names_of([3, 0]) == ("flower_top", "china_bottom")
        tensors[engine.kind] = TensorShards(hand_off(engine, DeepStage(model="softmax"), run, data).dir)
        facts = json.loads((run.dir / "manifest.json").read_text())
        assert facts["stages"][0]["class_names"] == list(PATCH_CLASSES)  # in the manifest and the report
        assert "flower_bottom" in (run.dir / "report.html").read_text()
        runs = run
    dask, spark = tensors["dask"], tensors["spark"]
    assert dask.manifest["splits"] == spark.manifest["splits"]  # the same shard files (SHA-256) from both engines
    assert dask.manifest["classes"] == 4 and dask.sample_shape == shape
    for split in ("train", "test"):
        x, y = dask.open(split).range(0, dask.open(split).rows)
        rows = written_rows(runs, split)
        want = np.stack([reference(patches / name, shape) for name in rows["_source"]]).astype("float32") / 255
        np.testing.assert_array_equal(x, want)
        names = [PATCH_CLASSES[int(v)] for v in y]
        assert names == [name.split("/")[0] for name in rows["_source"]]


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_crop_and_pad_keep_the_aspect_and_grayscale_uses_the_luma_rule(patches, resize):
    files = sorted(patches.glob("*/*"))[:8]
    for path in files:
        got = decode_image(str(path), (12, 30, 1), resize)
        np.testing.assert_array_equal(got, reference(path, (12, 30, 1), resize))
        got = decode_image(str(path), (30, 12, 3), resize)
        np.testing.assert_array_equal(got, reference(path, (30, 12, 3), resize))


def _bad_files(root: Path) -> dict[str, str]:
    """Damaged and wrong files in class folders: name -> the start of the reason they are quarantined for."""
    from sklearn.datasets import load_sample_images

    crop = Image.fromarray(load_sample_images().images[1][100:164, 100:164])
    jpg, png = io.BytesIO(), io.BytesIO()
    crop.save(jpg, "JPEG")
    crop.save(png, "PNG")
    jpeg = bytearray(jpg.getvalue())
    at = jpeg.find(b"\xff\xc4")  # the Huffman table: overwritten
    jpeg[at + 4 : at + 40] = b"\xff" * 36
    (root / "china_top" / "corrupt.jpg").write_bytes(bytes(jpeg))
    (root / "china_top" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "flower_top" / "notes.jpg").write_text("this is not an image\n")
    (root / "flower_top" / "empty.jpg").write_bytes(b"")
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 37).astype(np.uint16)).save(root / "flower_top" / "deep.png")
    return {
        "china_top/corrupt.jpg": "cannot identify image",
        "china_top/truncated.png": "cannot decode (OSError: image file is truncated",
        "flower_top/notes.jpg": "cannot identify image",
        "flower_top/empty.jpg": "empty file",
        "flower_top/deep.png": "mode I;16 (PNG) has more than 8 bits per channel",
    }


def test_damaged_and_wrong_files_are_quarantined_by_path_and_counts_reconcile(dask_engine, tmp_path):
    data = tmp_path / "data"
    write_patch_folder(data, per_class=6, seed=2, suffixes=(".png", ".jpg"))
    bad = _bad_files(data)
    (data / "stray.png").write_bytes((data / "china_top" / "china_top-00000.png").read_bytes())
    bad["stray.png"] = "image file outside the class subfolders"
    (data / "china_top" / "readme.txt").write_text("not listed: not an image suffix")
    config = PipelineConfig.model_validate(folder_config(tmp_path, data, [16, 16, 3]))
    run, state = run_pipeline(config, engine=dask_engine)
    ingest = state["ingest"]
    assert (ingest.read, ingest.accepted, ingest.rejected) == (24 + 6, 24, 6)
    assert sum(ingest.splits.values()) == ingest.accepted
    quarantine = pd.read_csv(run.dir / "quarantine.csv")
    assert sorted(quarantine["source"]) == sorted(bad)
    for source, reason, column in zip(quarantine["source"], quarantine["reason"], quarantine["column"], strict=True):
        assert reason.startswith(bad[source]), (source, reason)
        assert column == ("label" if source == "stray.png" else "image")
    written = pd.concat([written_rows(run, s) for s in ("train", "test")])
    assert not set(written["_source"]) & set(bad) and len(written) == 24


def test_grayscale_folder_and_listing_file_with_text_labels(dask_engine, tmp_path):
    data = tmp_path / "gray"
    files = write_patch_folder(data, per_class=4, seed=4, grayscale=True, suffixes=(".png", ".bmp", ".tif"))
    listing = pd.DataFrame(
        {"path": [str(f.relative_to(data)) for f in files], "label": [f.parent.name.upper() for f in files]}
    )
    listing.to_csv(data / "list.csv", index=False)
    for path in (data, data / "list.csv"):
        config = PipelineConfig.model_validate(folder_config(tmp_path / f"run{path.suffix}", path, [10, 10, 1]))
        run, state = run_pipeline(config, engine=dask_engine)
        names = [c.upper() for c in PATCH_CLASSES] if path.suffix else list(PATCH_CLASSES)
        assert state["ingest"].class_names == names and state["ingest"].rejected == 0
        rows = written_rows(run, "train")
        x = np.stack([np.frombuffer(b, "float32") for b in rows["image"]]).reshape(-1, 10, 10, 1)
        want = np.stack([reference(data / name, (10, 10, 1)) for name in rows["_source"]]).astype("float32") / 255
        np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize(("declared", "refused"), [(None, True), (False, True), (True, False)])
def test_a_folder_s_flips_are_off_unless_its_image_section_declares_them(tmp_path, declared, refused):
    """A user's folder has no known mirror symmetry: flips are refused unless `flips: true` is declared."""
    image = {"shape": [8, 8, 3]} | ({} if declared is None else {"flips": declared})
    dataset = DatasetConfig(name="mine", format="images", path=str(tmp_path), image=image)
    assert dataset.image_flips() is (not refused)
    settings = SimpleNamespace(name="p", dataset=dataset, engine=SimpleNamespace(kind="dask"))
    for field, stage in (
        ("augment.flip", DeepStage(model="mnist_cnn", augment={"flip": True})),
        ("test_time_augment.flip", DeepStage(model="mnist_cnn", test_time_augment={"flip": True})),
    ):
        problems = [p.path for p in stage.check([IngestStage(write=True)], settings)]
        assert (field in problems) == refused


def test_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        list_images(str(tmp_path / "flat"))
    assert list_images(str(tmp_path / "flat"), labels_optional=True).labelled is False
    with pytest.raises(DataError, match="no such folder"):
        list_images(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="C 1 or 3"):
        DatasetConfig(name="x", format="images", path=str(tmp_path), image={"shape": [8, 8, 2]})


@pytest.mark.slow
def test_class_names_round_trip_into_training_results_and_predictions(dask_engine, patches, tmp_path):
    from pipelines.predict.job import predict

    deep = {"stage": "deep", "model": "softmax", "epochs": 1, "ranks": 1, "batch_size": 16, "plots": False}
    run = run_pipeline(parse_config(folder_config(tmp_path, patches, [8, 8, 3], deep)), engine=dask_engine).run
    results = json.loads((run.dir / "deep" / "softmax" / "results.json").read_text())
    assert results["test"]["confusion_matrix"]["labels"] == list(PATCH_CLASSES)
    # a folder with class subfolders: labelled by the run's class names; a folder of loose files: unlabelled
    new = tmp_path / "new"
    write_patch_folder(new, per_class=3, seed=9)
    (new / "flower_top").rename(new / "unknown_class")
    summary = predict(run.dir, "softmax", str(new), tmp_path / "out", engine=dask_engine)
    assert (summary["read"], summary["scored"], summary["rejected"], summary["labelled"]) == (12, 9, 3, True)
    frame = pd.read_parquet(tmp_path / "out" / "predictions")
    assert set(frame["prediction"]) <= set(PATCH_CLASSES)
    assert list(frame.columns)[3:] == [f"probability_{c}" for c in PATCH_CLASSES] + ["label"]
    assert sorted(set(frame["label"])) == ["china_bottom", "china_top", "flower_bottom"]
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in sorted((new / "china_top").iterdir()):
        f.rename(loose / f.name)
    bare = predict(run.dir, "softmax", str(loose), tmp_path / "bare", engine=dask_engine)
    assert (bare["scored"], bare["labelled"]) == (3, False)
    assert sorted(pd.read_parquet(tmp_path / "bare" / "predictions")["source_file"]) == sorted(
        f.name for f in loose.iterdir()
    )


@pytest.mark.slow
def test_colour_folder_trains_from_scratch_and_by_transfer_from_a_keras_application(dask_engine, tmp_path):
    import keras

    data = tmp_path / "data"
    write_patch_folder(data, per_class=50, size=(32, 96), seed=5)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg")
    weights = tmp_path / "mobilenet.weights.h5"
    base.save_weights(weights)  # "the user's own weights file": random here, never downloaded
    common = {"stage": "deep", "ranks": 1, "batch_size": 16, "plots": False}
    stages = [
        {**common, "name": "scratch", "model": "mnist_cnn", "epochs": 15, "params": {"filters": 8, "dense": 32}},
        {
            **common,
            "name": "mobilenet",
            "model": "transfer",
            "epochs": 1,
            "transfer": {"source": "keras:MobileNetV2", "weights": str(weights), "head": [16]},
        },
    ]
    run = run_pipeline(parse_config(folder_config(tmp_path, data, [32, 32, 3], *stages)), engine=dask_engine).run
    scratch = json.loads((run.dir / "deep" / "scratch" / "results.json").read_text())
    assert scratch["test"]["accuracy"] > 0.5  # four classes: chance is 0.25
    tuned = json.loads((run.dir / "deep" / "mobilenet" / "results.json").read_text())
    assert tuned["test"]["confusion_matrix"]["labels"] == list(PATCH_CLASSES)
    model = keras.saving.load_model(run.dir / "deep" / "mobilenet" / "model.keras", compile=False)
    moved = model.get_layer("base").get_weights()
    for a, b in zip(moved, base.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the named file's weights, frozen (mode: features)


def test_a_keras_application_source_is_checked_without_tensorflow(tmp_path):
    from pipelines.deep.stage import TransferSpec, _application_problems

    spec = TransferSpec(source="keras:NoSuchNet", weights=str(tmp_path / "missing.h5"))
    problems = [str(p) for p in _application_problems("NoSuchNet", spec.weights)]
    assert "not one of" in problems[0] and "no such file" in problems[1]
