"""Tiny fixtures of twelve real Kaggle competitions, each laid out exactly as the competition ships
it (file names, folders, zip archives, columns, id formats, sample submission, extra columns), and
each competition's own grading of a submission.

The facts (files, columns, ids, scoring) come from the competitions' pages and from
``openai/mle-bench``'s ``mlebench/competitions/<slug>/prepare.py`` and ``grade.py``; the code is
ours. A builder writes ``public/`` (what a competitor downloads) and ``private/`` (the answers,
never shipped) under a folder and returns them. Images are scikit-learn's 8x8 digits, upscaled
and tinted with a colour per class, or for multilabel a grid of lit cells, one per label, so
that a tiny network can learn the label; each class appears at least :data:`PER_CLASS` times
in train (enough for 2 stratified folds) and at least once in test.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer

#: Pixels of every fixture image (the tests train at 16).
SIZE = 32

#: Train images per class (single-label) or per label (multilabel, at least).
PER_CLASS = 6

#: Test images per class.
TEST_PER_CLASS = 2

#: One colour per class index: the tint that makes a class learnable at 16 px.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
], dtype=np.float64)


@dataclass(frozen=True)
class Fixture:
    """A built competition: ``public`` is what the competition ships, ``private`` its answers."""

    public: Path
    private: Path


@dataclass(frozen=True)
class Competition:
    """One competition's fixture builder and its own rules for a submission.

    Attributes:
        slug: the Kaggle slug (= ``pipelines/<slug>.yaml``).
        build: writes ``public/`` and ``private/`` under a folder.
        sample: the sample submission's file name in ``public/``.
        answers: the answers file's name in ``private/``.
        grade: ``grade(submission, answers) -> score``, as the competition scores.
        check: ``check(submission, sample, fixture)`` asserts the competition's own rules.
        solution: the answers as the pipeline's train table labels its rows (``data.solution``,
            for foldstack's local score), where the answers are laid out otherwise; None: as they are.
    """

    slug: str
    build: Callable[[Path], Fixture]
    sample: str
    answers: str
    grade: Callable[[pd.DataFrame, pd.DataFrame], float]
    check: Callable[[pd.DataFrame, pd.DataFrame, Fixture], None]
    solution: Callable[[pd.DataFrame], pd.DataFrame] | None = None


# --- images ----------------------------------------------------------------------------------------


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


def picture(class_index: int, rng: np.random.Generator, grey: bool = False) -> np.ndarray:
    """A digit (``class_index`` mod 10, one of scikit-learn's, at random) upscaled to
    :data:`SIZE` and tinted with the class's colour: ``(SIZE, SIZE, 3)`` uint8 (or ``(SIZE, SIZE)``
    grey, the brightness then carrying the class)."""
    images, targets = _digits()
    choices = np.flatnonzero(targets == class_index % 10)
    digit = images[rng.choice(choices)]
    big = np.kron(digit, np.ones((SIZE // 8, SIZE // 8)))
    noise = rng.normal(0.0, 0.04, big.shape)
    if grey:
        level = 0.35 + 0.65 * (class_index + 1) / 12
        return np.clip((0.15 + 0.85 * big * level + noise) * 255, 0, 255).astype(np.uint8)
    colour = PALETTE[class_index % len(PALETTE)]
    rgb = 40 + big[..., None] * (colour - 40) + noise[..., None] * 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


def grid_picture(active: list[int], n_labels: int, rng: np.random.Generator, grey: bool = False) -> np.ndarray:
    """A multilabel image: a grid of ``n_labels`` cells, cell ``j`` lit where label ``j`` is present."""
    columns = int(np.ceil(np.sqrt(n_labels)))
    rows = int(np.ceil(n_labels / columns))
    image = rng.normal(0.1, 0.03, (SIZE, SIZE, 3))
    cell_h, cell_w = SIZE // rows, SIZE // columns
    for j in active:
        r, c = divmod(j, columns)
        image[r * cell_h:(r + 1) * cell_h - 1, c * cell_w:(c + 1) * cell_w - 1] += PALETTE[j % len(PALETTE)] / 255 * 0.8
    image = np.clip(image * 255, 0, 255).astype(np.uint8)
    return image.mean(axis=2).astype(np.uint8) if grey else image


def save(image: np.ndarray, path: Path) -> None:
    """Write ``image`` in the format its suffix says (.jpg at high quality so tints survive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(image).save(path, **options)


def save_pictures(paths: list[Path], labels: list[int], rng: np.random.Generator) -> None:
    """One :func:`picture` of each path's class index, written to the path."""
    for path, class_index in zip(paths, labels):
        save(picture(class_index, rng), path)


def class_folders(folders: tuple[Path, Path], classes: list[str], names: list[str], train: list[int],
                  test: list[int], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Images laid out one folder per class for train (``<train>/<class>/<name>``) and flat for
    test (``<test>/<name>``), named by ``names`` in order; the train names and the test names."""
    train_names, test_names = names[:len(train)], names[len(train):]
    save_pictures([folders[0] / classes[c] / name for name, c in zip(train_names, train)], train, rng)
    save_pictures([folders[1] / name for name in test_names], test, rng)
    return train_names, test_names


def save_dicom(image: np.ndarray, path: Path, uid: str) -> None:
    """Write an RGB ``image`` as an uncompressed DICOM file (SIIM-ISIC ships dermoscopy DICOMs)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = uid
    ds.Modality = "XC"  # external-camera photography, as the ISIC archive's
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def zip_folder(folder: Path, archive: Path, top: bool) -> None:
    """Zip ``folder``'s files into ``archive`` (members under ``folder.name/`` when ``top``, else
    flat) and remove the folder, as a competition ships only the archive."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder.parent if top else folder).as_posix()
                handle.write(path, name)
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()


def hex_ids(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """``n`` distinct lowercase hex ids of ``length`` characters."""
    ids: list[str] = []
    while len(ids) < n:
        candidate = "".join(rng.choice(list("0123456789abcdef"), length))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def digit_ids(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """``n`` distinct decimal ids of ``length`` digits (no leading zero)."""
    ids: list[str] = []
    while len(ids) < n:
        candidate = str(rng.integers(1, 10)) + "".join(rng.choice(list("0123456789"), length - 1))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def split_labels(classes: list[str], rng: np.random.Generator, per_class: int = PER_CLASS,
                 test_per_class: int = TEST_PER_CLASS) -> tuple[list[int], list[int]]:
    """Class indices of the train rows and test rows, shuffled (every class in both)."""
    train = [c for c in range(len(classes)) for _ in range(per_class)]
    test = [c for c in range(len(classes)) for _ in range(test_per_class)]
    return list(rng.permutation(train)), list(rng.permutation(test))


def label_sets(n_labels: int, n_rows: int, rng: np.random.Generator, offset: int = 0) -> list[list[int]]:
    """Multilabel rows: row i holds label (i + offset) mod n and, every other row, a second one;
    each label is then present in at least ``n_rows // n_labels`` rows and absent from others."""
    rows = []
    for i in range(n_rows):
        labels = {(i + offset) % n_labels}
        if i % 2:
            labels.add((3 * i + 1 + offset) % n_labels)
        rows.append(sorted(labels))
    order = rng.permutation(n_rows)
    return [rows[i] for i in order]


# --- the competitions --------------------------------------------------------------------------------

DOG_BREEDS = ["affenpinscher", "beagle", "golden_retriever", "siberian_husky"]


def build_dog_breed(root: Path) -> Fixture:
    """labels.csv (id, breed), train/<id>.jpg, test/<id>.jpg, sample_submission.csv (id, then one
    probability column per breed); answers one-hot like the submission."""
    rng = np.random.default_rng(1)
    public, private = root / "public", root / "private"
    train, test = split_labels(DOG_BREEDS, rng)
    ids = hex_ids(rng, len(train) + len(test), 32)
    train_ids, test_ids = ids[:len(train)], ids[len(train):]
    save_pictures([public / "train" / f"{i}.jpg" for i in train_ids], train, rng)
    save_pictures([public / "test" / f"{i}.jpg" for i in test_ids], test, rng)
    write_csv(pd.DataFrame({"id": train_ids, "breed": [DOG_BREEDS[c] for c in train]}), public / "labels.csv")
    write_csv(pd.DataFrame({"id": test_ids, **{b: 1 / len(DOG_BREEDS) for b in DOG_BREEDS}}),
              public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, **{b: [int(c == k) for c in test] for k, b in enumerate(DOG_BREEDS)}}),
              private / "test.csv")
    return Fixture(public, private)


def build_aerial_cactus(root: Path) -> Fixture:
    """train.csv (id = '<32 hex>.jpg', has_cactus), train.zip and test.zip holding the 32x32
    JPEGs flat (as mle-bench repacks them), sample_submission.csv (id, has_cactus = 0.5)."""
    rng = np.random.default_rng(2)
    public, private = root / "public", root / "private"
    train, test = split_labels(["0", "1"], rng, per_class=8, test_per_class=4)
    ids = [f"{i}.jpg" for i in hex_ids(rng, len(train) + len(test), 32)]
    train_ids, test_ids = ids[:len(train)], ids[len(train):]
    for split, split_ids, labels in (("train", train_ids, train), ("test", test_ids, test)):
        save_pictures([public / split / i for i in split_ids], labels, rng)
        zip_folder(public / split, public / f"{split}.zip", top=False)
    write_csv(pd.DataFrame({"id": train_ids, "has_cactus": train}), public / "train.csv")
    write_csv(pd.DataFrame({"id": test_ids, "has_cactus": 0.5}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "has_cactus": test}), private / "test.csv")
    return Fixture(public, private)


SEEDLINGS = ["Black-grass", "Common Chickweed", "Common wheat", "Sugar beet"]


def build_plant_seedlings(root: Path) -> Fixture:
    """train/<species>/<9 hex>.png, test/<9 hex>.png, sample_submission.csv (file, species =
    'Sugar beet')."""
    rng = np.random.default_rng(3)
    public, private = root / "public", root / "private"
    train, test = split_labels(SEEDLINGS, rng)
    files = [f"{i}.png" for i in hex_ids(rng, len(train) + len(test), 9)]
    _, test_files = class_folders((public / "train", public / "test"), SEEDLINGS, files, train, test, rng)
    write_csv(pd.DataFrame({"file": test_files, "species": "Sugar beet"}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"file": test_files, "species": [SEEDLINGS[c] for c in test]}), private / "answers.csv")
    return Fixture(public, private)


def build_dogs_vs_cats(root: Path) -> Fixture:
    """train.zip holding train/cat.<n>.jpg and train/dog.<n>.jpg, test.zip holding test/<n>.jpg
    (n from 1), sample_submission.csv (id, label = 0.5: the probability of a dog)."""
    rng = np.random.default_rng(4)
    public, private = root / "public", root / "private"
    train, test = split_labels(["cat", "dog"], rng, per_class=8, test_per_class=4)
    counters = {0: 0, 1: 0}
    for c in train:
        save(picture(c, rng), public / "train" / f"{['cat', 'dog'][c]}.{counters[c]}.jpg")
        counters[c] += 1
    save_pictures([public / "test" / f"{n}.jpg" for n in range(1, len(test) + 1)], test, rng)
    zip_folder(public / "train", public / "train.zip", top=True)
    zip_folder(public / "test", public / "test.zip", top=True)
    test_ids = list(range(1, len(test) + 1))
    write_csv(pd.DataFrame({"id": test_ids, "label": 0.5}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "label": test}), private / "answers.csv")
    return Fixture(public, private)


def build_histopathologic(root: Path) -> Fixture:
    """train_labels.csv (id = 40 hex, label 0/1), train/<id>.tif and test/<id>.tif (RGB TIFF),
    sample_submission.csv (id, label = 0)."""
    rng = np.random.default_rng(5)
    public, private = root / "public", root / "private"
    train, test = split_labels(["0", "1"], rng, per_class=8, test_per_class=4)
    ids = hex_ids(rng, len(train) + len(test), 40)
    train_ids, test_ids = ids[:len(train)], ids[len(train):]
    save_pictures([public / "train" / f"{i}.tif" for i in train_ids], train, rng)
    save_pictures([public / "test" / f"{i}.tif" for i in test_ids], test, rng)
    write_csv(pd.DataFrame({"id": train_ids, "label": train}), public / "train_labels.csv")
    write_csv(pd.DataFrame({"id": test_ids, "label": 0}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "label": test}), private / "answers.csv")
    return Fixture(public, private)


def build_aptos(root: Path) -> Fixture:
    """train.csv (id_code = 12 hex, diagnosis 0-4), test.csv (id_code), train_images/<id>.png,
    test_images/<id>.png, sample_submission.csv (id_code, diagnosis = 0)."""
    rng = np.random.default_rng(6)
    public, private = root / "public", root / "private"
    grades = ["0", "1", "2", "3", "4"]
    train, test = split_labels(grades, rng)
    ids = hex_ids(rng, len(train) + len(test), 12)
    train_ids, test_ids = ids[:len(train)], ids[len(train):]
    save_pictures([public / "train_images" / f"{i}.png" for i in train_ids], train, rng)
    save_pictures([public / "test_images" / f"{i}.png" for i in test_ids], test, rng)
    write_csv(pd.DataFrame({"id_code": train_ids, "diagnosis": train}), public / "train.csv")
    write_csv(pd.DataFrame({"id_code": test_ids}), public / "test.csv")
    write_csv(pd.DataFrame({"id_code": test_ids, "diagnosis": 0}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id_code": test_ids, "diagnosis": test}), private / "test.csv")
    return Fixture(public, private)


PATHOLOGY = ["healthy", "multiple_diseases", "rust", "scab"]


def build_plant_pathology(root: Path) -> Fixture:
    """images/Train_<n>.jpg and images/Test_<n>.jpg in one folder, train.csv (image_id, then
    one-hot healthy, multiple_diseases, rust, scab), test.csv (image_id), sample_submission.csv
    (image_id, the four columns = 0.25)."""
    rng = np.random.default_rng(7)
    public, private = root / "public", root / "private"
    train, test = split_labels(PATHOLOGY, rng)
    train_ids = [f"Train_{n}" for n in range(len(train))]
    test_ids = [f"Test_{n}" for n in range(len(test))]
    save_pictures([public / "images" / f"{i}.jpg" for i in train_ids + test_ids], train + test, rng)

    def one_hot(ids: list[str], labels: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"image_id": ids, **{name: [int(c == k) for c in labels] for k, name in enumerate(PATHOLOGY)}})

    write_csv(one_hot(train_ids, train), public / "train.csv")
    write_csv(pd.DataFrame({"image_id": test_ids}), public / "test.csv")
    write_csv(pd.DataFrame({"image_id": test_ids, **{name: 0.25 for name in PATHOLOGY}}), public / "sample_submission.csv")
    write_csv(one_hot(test_ids, test), private / "test.csv")
    return Fixture(public, private)


CASSAVA = {"0": "Cassava Bacterial Blight (CBB)", "1": "Cassava Brown Streak Disease (CBSD)",
           "2": "Cassava Green Mottle (CGM)", "3": "Cassava Mosaic Disease (CMD)", "4": "Healthy"}


def build_cassava(root: Path) -> Fixture:
    """train.csv (image_id = '<10 digits>.jpg', label 0-4), train_images/, test_images/,
    label_num_to_disease_map.json, train_tfrecords/ and test_tfrecords/ (empty record files here),
    sample_submission.csv (image_id, label = 4)."""
    rng = np.random.default_rng(8)
    public, private = root / "public", root / "private"
    train, test = split_labels(list(CASSAVA), rng)
    ids = [f"{i}.jpg" for i in digit_ids(rng, len(train) + len(test), 10)]
    train_ids, test_ids = ids[:len(train)], ids[len(train):]
    save_pictures([public / "train_images" / i for i in train_ids], train, rng)
    save_pictures([public / "test_images" / i for i in test_ids], test, rng)
    for folder, name in (("train_tfrecords", "ld_train00-0.tfrec"), ("test_tfrecords", "ld_test00-0.tfrec")):
        (public / folder).mkdir(parents=True)
        (public / folder / name).write_bytes(b"")  # a TFRecord file with no record (not read by foldstack)
    (public / "label_num_to_disease_map.json").write_text(json.dumps(CASSAVA))
    write_csv(pd.DataFrame({"image_id": train_ids, "label": train}), public / "train.csv")
    write_csv(pd.DataFrame({"image_id": test_ids, "label": 4}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"image_id": test_ids, "label": test}), private / "test.csv")
    return Fixture(public, private)


def build_siim_isic(root: Path) -> Fixture:
    """train.csv (image_name, patient_id, sex, age_approx, anatom_site_general_challenge,
    diagnosis, benign_malignant, target), test.csv (the first five), train/<image_name>.dcm,
    test/<image_name>.dcm, jpeg/train/ and jpeg/test/ (the same images as JPEG),
    sample_submission.csv (image_name, target = 0). Several images per patient; the positives
    (melanoma) are fewer and spread over patients."""
    rng = np.random.default_rng(9)
    public, private = root / "public", root / "private"
    n_train, n_test = 24, 10
    train = [1 if i % 4 == 0 else 0 for i in range(n_train)]  # 6 melanomas of 24
    test = [1 if i % 3 == 0 else 0 for i in range(n_test)]
    names = [f"ISIC_{i}" for i in digit_ids(rng, n_train + n_test, 7)]
    train_names, test_names = names[:n_train], names[n_train:]
    patients = [f"IP_{i}" for i in digit_ids(rng, 12, 7)]
    # Four images a patient in train (patients 0-5), the rest in test; image i of train belongs to
    # patient i // 4, so patient p holds positive image 4p: every patient one melanoma.
    train_patients = [patients[i // 4] for i in range(n_train)]
    test_patients = [patients[6 + i // 2] for i in range(n_test)]
    sites = ["torso", "lower extremity", "upper extremity", "head/neck"]

    def meta(names: list[str], patients: list[str]) -> dict:
        return {"image_name": names, "patient_id": patients,
                "sex": [["male", "female"][int(p[-1]) % 2] for p in patients],
                "age_approx": [f"{30 + 5 * (int(p[-2:]) % 10)}.0" for p in patients],
                "anatom_site_general_challenge": [sites[k % 4] for k in range(len(names))]}

    for split, split_names, labels in (("train", train_names, train), ("test", test_names, test)):
        for name, c in zip(split_names, labels):
            image = picture(c, rng)
            save_dicom(image, public / split / f"{name}.dcm", name)
            save(image, public / "jpeg" / split / f"{name}.jpg")
    write_csv(pd.DataFrame({**meta(train_names, train_patients),
                            "diagnosis": ["melanoma" if t else "nevus" for t in train],
                            "benign_malignant": ["malignant" if t else "benign" for t in train],
                            "target": train}), public / "train.csv")
    write_csv(pd.DataFrame(meta(test_names, test_patients)), public / "test.csv")
    write_csv(pd.DataFrame({"image_name": test_names, "target": 0}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"image_name": test_names, "target": test}), private / "test.csv")
    return Fixture(public, private)


IMET_ATTRIBUTES = {"13": "culture::american", "51": "culture::british", "147": "medium::oil on canvas",
                   "813": "tags::flowers", "1059": "tags::portraits"}


def build_imet(root: Path) -> Fixture:
    """train.csv (id = 32 hex, attribute_ids = space-separated attribute ids), labels.csv
    (attribute_id, attribute_name), train/<id>.png, test/<id>.png, sample_submission.csv
    (id, attribute_ids = '0 1 2')."""
    rng = np.random.default_rng(10)
    public, private = root / "public", root / "private"
    attributes = list(IMET_ATTRIBUTES)
    n_train, n_test = 30, 10
    train = label_sets(len(attributes), n_train, rng)
    test = label_sets(len(attributes), n_test, rng, offset=2)
    ids = hex_ids(rng, n_train + n_test, 32)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    for split, split_ids, rows in (("train", train_ids, train), ("test", test_ids, test)):
        for i, row in zip(split_ids, rows):
            save(grid_picture(row, len(attributes), rng), public / split / f"{i}.png")

    def joined(rows: list[list[int]]) -> list[str]:
        return [" ".join(attributes[j] for j in row) for row in rows]

    write_csv(pd.DataFrame({"id": train_ids, "attribute_ids": joined(train)}), public / "train.csv")
    write_csv(pd.DataFrame({"attribute_id": attributes, "attribute_name": list(IMET_ATTRIBUTES.values())}),
              public / "labels.csv")
    write_csv(pd.DataFrame({"id": test_ids, "attribute_ids": "0 1 2"}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "attribute_ids": joined(test)}), private / "answers.csv")
    return Fixture(public, private)


PADDY = ["bacterial_leaf_blight", "blast", "normal", "tungro"]


def build_paddy(root: Path) -> Fixture:
    """train.csv (image_id = '<6 digits>.jpg', label, variety, age), train_images/<label>/<image_id>,
    test_images/<image_id>, sample_submission.csv (image_id, label empty)."""
    rng = np.random.default_rng(11)
    public, private = root / "public", root / "private"
    train, test = split_labels(PADDY, rng)
    ids = [f"{i}.jpg" for i in digit_ids(rng, len(train) + len(test), 6)]
    train_ids, test_ids = class_folders((public / "train_images", public / "test_images"), PADDY, ids, train, test, rng)
    write_csv(pd.DataFrame({"image_id": train_ids, "label": [PADDY[c] for c in train],
                            "variety": rng.choice(["ADT45", "KarnatakaPonni", "Ponni"], len(train)),
                            "age": rng.choice([45, 50, 60, 70], len(train))}), public / "train.csv")
    write_csv(pd.DataFrame({"image_id": test_ids, "label": ""}), public / "sample_submission.csv")
    write_csv(pd.DataFrame({"image_id": test_ids, "label": [PADDY[c] for c in test]}), private / "test.csv")
    return Fixture(public, private)


CATHETERS = ["ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "NGT - Borderline",
             "NGT - Incompletely Imaged", "NGT - Normal", "CVC - Abnormal", "CVC - Borderline", "CVC - Normal",
             "Swan Ganz Catheter Present"]


def build_ranzcr(root: Path) -> Fixture:
    """train.csv (StudyInstanceUID, the 11 one-hot catheter columns, PatientID),
    train_annotations.csv (StudyInstanceUID, label, data), train/<uid>.jpg and test/<uid>.jpg
    (grey chest x-rays), sample_submission.csv (StudyInstanceUID, the 11 columns = 0)."""
    rng = np.random.default_rng(12)
    public, private = root / "public", root / "private"
    n_train, n_test = 44, 11
    train = label_sets(len(CATHETERS), n_train, rng)
    test = label_sets(len(CATHETERS), n_test, rng, offset=5)
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in digit_ids(rng, n_train + n_test, 38)]
    train_uids, test_uids = uids[:n_train], uids[n_train:]
    patients = hex_ids(rng, 22, 9)
    for split, split_uids, rows in (("train", train_uids, train), ("test", test_uids, test)):
        for uid, row in zip(split_uids, rows):
            save(grid_picture(row, len(CATHETERS), rng, grey=True), public / split / f"{uid}.jpg")

    def one_hot(uids: list[str], rows: list[list[int]]) -> dict:
        return {"StudyInstanceUID": uids, **{name: [int(j in row) for row in rows] for j, name in enumerate(CATHETERS)}}

    write_csv(pd.DataFrame({**one_hot(train_uids, train), "PatientID": [patients[i // 2] for i in range(n_train)]}),
              public / "train.csv")
    write_csv(pd.DataFrame({"StudyInstanceUID": train_uids[:3], "label": [CATHETERS[row[0]] for row in train[:3]],
                            "data": ["[[1487, 1279], [1477, 1168], [1472, 1052]]"] * 3}),
              public / "train_annotations.csv")
    write_csv(pd.DataFrame({"StudyInstanceUID": test_uids, **{name: 0 for name in CATHETERS}}),
              public / "sample_submission.csv")
    write_csv(pd.DataFrame(one_hot(test_uids, test)), private / "test.csv")
    return Fixture(public, private)


# --- grading, as each competition scores ------------------------------------------------------------


def _aligned(submission: pd.DataFrame, answers: pd.DataFrame, id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables sorted by id, after checking they hold the same ids (as the graders do)."""
    sub = submission.sort_values(id_column).reset_index(drop=True)
    ans = answers.sort_values(id_column).reset_index(drop=True)
    assert sub[id_column].astype(str).tolist() == ans[id_column].astype(str).tolist(), "ids differ from the answers"
    return sub, ans


def auc(id_column: str, target: str) -> Callable[[pd.DataFrame, pd.DataFrame], float]:
    def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
        sub, ans = _aligned(submission, answers, id_column)
        return float(roc_auc_score(ans[target].astype(int), sub[target].astype(float)))
    return grade


def mean_column_auc(id_column: str, columns: list[str]) -> Callable[[pd.DataFrame, pd.DataFrame], float]:
    def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
        sub, ans = _aligned(submission, answers, id_column)
        return float(np.mean([roc_auc_score(ans[c].astype(int), sub[c].astype(float)) for c in columns]))
    return grade


def accuracy(id_column: str, target: str) -> Callable[[pd.DataFrame, pd.DataFrame], float]:
    def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
        sub, ans = _aligned(submission, answers, id_column)
        return float(accuracy_score(ans[target].astype(str), sub[target].fillna("").astype(str)))
    return grade


def f1_micro_labels(id_column: str, target: str) -> Callable[[pd.DataFrame, pd.DataFrame], float]:
    def grade(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
        sub, ans = _aligned(submission, answers, id_column)
        return float(f1_score(ans[target].astype(str), sub[target].astype(str), average="micro"))
    return grade


def grade_dog_breed(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = _aligned(submission, answers, "id")
    return float(log_loss(ans[DOG_BREEDS].to_numpy().argmax(axis=1), sub[DOG_BREEDS].astype(float).to_numpy(),
                          labels=range(len(DOG_BREEDS))))


def grade_dogs_vs_cats(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = _aligned(submission.astype({"id": int}), answers.astype({"id": int}), "id")
    return float(log_loss(ans["label"].astype(int), sub["label"].astype(float), labels=[0, 1]))


def grade_aptos(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = _aligned(submission, answers, "id_code")
    return float(cohen_kappa_score(sub["diagnosis"].astype(int), ans["diagnosis"].astype(int), weights="quadratic"))


def grade_imet(submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    sub, ans = _aligned(submission, answers, "id")
    classes = sorted(set(ans["attribute_ids"].str.split().explode()))
    binarizer = MultiLabelBinarizer(classes=classes)
    y_true = binarizer.fit_transform(ans["attribute_ids"].fillna("").str.split())
    # A predicted id outside the answers' classes is ignored by the binarizer, as the grader's is.
    y_pred = binarizer.transform(sub["attribute_ids"].fillna("").str.split())
    return float(f1_score(y_true, y_pred, average="micro"))


# --- the answers as a train table labels its rows ---------------------------------------------------


def dog_breed_solution(answers: pd.DataFrame) -> pd.DataFrame:
    """One-hot answers as labels.csv writes them: ``id, breed``."""
    return pd.DataFrame({"id": answers["id"], "breed": answers[DOG_BREEDS].astype(int).idxmax(axis=1)})


def dogs_vs_cats_solution(answers: pd.DataFrame) -> pd.DataFrame:
    """0/1 answers (1: a dog) as the file names label the training images: ``cat``, ``dog``."""
    return pd.DataFrame({"id": answers["id"], "label": answers["label"].map({"0": "cat", "1": "dog"})})


# --- each competition's rules for a submission -------------------------------------------------------


def same_frame_shape(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """The sample submission's columns, ids and order."""
    assert list(submission.columns) == list(sample.columns), (list(submission.columns), list(sample.columns))
    id_column = sample.columns[0]
    assert submission[id_column].astype(str).tolist() == sample[id_column].astype(str).tolist()


def probabilities(columns: list[str], sum_to_one: bool) -> Callable[[pd.DataFrame, pd.DataFrame, Fixture], None]:
    def check(submission: pd.DataFrame, sample: pd.DataFrame, fixture: Fixture) -> None:
        same_frame_shape(submission, sample)
        values = submission[columns].astype(float).to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
        if sum_to_one:
            np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)
    return check


def labels_from(allowed: list[str], column: str) -> Callable[[pd.DataFrame, pd.DataFrame, Fixture], None]:
    def check(submission: pd.DataFrame, sample: pd.DataFrame, fixture: Fixture) -> None:
        same_frame_shape(submission, sample)
        assert set(submission[column].astype(str)) <= set(allowed), set(submission[column]) - set(allowed)
    return check


def check_aptos(submission: pd.DataFrame, sample: pd.DataFrame, fixture: Fixture) -> None:
    same_frame_shape(submission, sample)
    grades = submission["diagnosis"].astype(str)
    assert grades.str.fullmatch(r"[0-4]").all(), grades.tolist()  # integer grades, as written


def check_imet(submission: pd.DataFrame, sample: pd.DataFrame, fixture: Fixture) -> None:
    same_frame_shape(submission, sample)
    known = set(pd.read_csv(fixture.public / "labels.csv", dtype=str)["attribute_id"])
    for cell in submission["attribute_ids"].fillna("").astype(str):
        ids = cell.split(" ") if cell else []
        assert all(ids) and set(ids) <= known, cell  # single spaces, ids from labels.csv


COMPETITIONS: dict[str, Competition] = {c.slug: c for c in [
    Competition("dog-breed-identification", build_dog_breed, "sample_submission.csv", "test.csv",
                grade_dog_breed, probabilities(DOG_BREEDS, sum_to_one=True), dog_breed_solution),
    Competition("aerial-cactus-identification", build_aerial_cactus, "sample_submission.csv", "test.csv",
                auc("id", "has_cactus"), probabilities(["has_cactus"], sum_to_one=False)),
    Competition("plant-seedlings-classification", build_plant_seedlings, "sample_submission.csv", "answers.csv",
                f1_micro_labels("file", "species"), labels_from(SEEDLINGS, "species")),
    Competition("dogs-vs-cats-redux-kernels-edition", build_dogs_vs_cats, "sample_submission.csv", "answers.csv",
                grade_dogs_vs_cats, probabilities(["label"], sum_to_one=False), dogs_vs_cats_solution),
    Competition("histopathologic-cancer-detection", build_histopathologic, "sample_submission.csv", "answers.csv",
                auc("id", "label"), probabilities(["label"], sum_to_one=False)),
    Competition("aptos2019-blindness-detection", build_aptos, "sample_submission.csv", "test.csv",
                grade_aptos, check_aptos),
    Competition("plant-pathology-2020-fgvc7", build_plant_pathology, "sample_submission.csv", "test.csv",
                mean_column_auc("image_id", PATHOLOGY), probabilities(PATHOLOGY, sum_to_one=True)),
    Competition("cassava-leaf-disease-classification", build_cassava, "sample_submission.csv", "test.csv",
                accuracy("image_id", "label"), labels_from(list(CASSAVA), "label")),
    Competition("siim-isic-melanoma-classification", build_siim_isic, "sample_submission.csv", "test.csv",
                auc("image_name", "target"), probabilities(["target"], sum_to_one=False)),
    Competition("imet-2020-fgvc7", build_imet, "sample_submission.csv", "answers.csv", grade_imet, check_imet),
    Competition("paddy-disease-classification", build_paddy, "sample_submission.csv", "test.csv",
                accuracy("image_id", "label"), labels_from(PADDY, "label")),
    Competition("ranzcr-clip-catheter-line-classification", build_ranzcr, "sample_submission.csv", "test.csv",
                mean_column_auc("StudyInstanceUID", CATHETERS), probabilities(CATHETERS, sum_to_one=False)),
]}


def build(slug: str, root: Path) -> Fixture:
    """The fixture of competition ``slug`` under ``root``."""
    return COMPETITIONS[slug].build(root)


def fingerprint(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes' digest: the competition's files, to show untouched."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
