"""Tests of the dataset readers and the cross-validation splits."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.amibr_fixture import make_patch, write_amibr
from training.config import SplitConfig
from training.data import DataError, Sample, fit_to_size, load_images, read_amibr, read_dataset, read_folder
from training.splits import fold_indices, make_domain_split, make_split, split_for


@pytest.fixture(scope="module")
def amibr_root(tmp_path_factory):
    return write_amibr(tmp_path_factory.mktemp("amibr"))


# --- data ---------------------------------------------------------------------------------------

def test_amibr_reader_keeps_slide_domain_and_label(amibr_root):
    samples = read_amibr(amibr_root)
    assert len(samples) == 48
    assert {s.label for s in samples} == {0, 1}
    first = samples[0]
    assert first.slide == "slide_00.tif" and first.domain["dataset"] == "TUPAC16" and first.label == 1
    assert first.path.name == "TUPAC16_0.png" and first.path.parent.name == "atypical"


def test_amibr_reader_names_the_row_of_a_missing_image(amibr_root, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "AMI-BR.csv").write_text((amibr_root / "AMI-BR.csv").read_text())
    with pytest.raises(DataError, match=r"row 2: image .*TUPAC16_0.png not found"):
        read_amibr(broken)


def test_amibr_reader_rejects_a_bad_label(tmp_path):
    (tmp_path / "AMI-BR.csv").write_text(",slide,dataset,uid,majority_atypical\n0,s,D,1,maybe\n")
    with pytest.raises(DataError, match="row 2: unknown label 'maybe'"):
        read_amibr(tmp_path)


def test_fit_to_size_crops_and_pads_around_the_centre():
    image = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    fitted = fit_to_size(image, 4)  # rows 6 -> 4 (crop 1 each side), columns 4 -> 4
    np.testing.assert_array_equal(fitted, image[1:5])
    padded = fit_to_size(image, 8)  # rows 6 -> 8 (1 black row each side), columns 4 -> 8 (2 each side)
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[1:7, 2:6], image)
    assert padded[0].sum() == 0 and padded[:, :2].sum() == 0


def test_load_images_rejects_a_patch_far_from_128(tmp_path):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(path)
    with pytest.raises(DataError, match="list.csv, row 9: .*huge.png is 600x600, expected about 128x128"):
        load_images([Sample("x", path, 0, "s", origin="list.csv, row 9")])


# --- splits -------------------------------------------------------------------------------------

def test_split_never_puts_a_slide_in_train_and_validation(amibr_root):
    samples = read_amibr(amibr_root)
    split = make_split(samples, n_folds=4, seed=3)
    seen_in_validation = []
    for fold in range(4):
        train, val = fold_indices(split, samples, fold)
        train_slides = {samples[i].slide for i in train}
        val_slides = {samples[i].slide for i in val}
        assert train_slides.isdisjoint(val_slides)
        assert len(train) + len(val) == len(samples)
        seen_in_validation += [samples[i].sample_id for i in val]
    assert sorted(seen_in_validation) == sorted(s.sample_id for s in samples)  # each sample validated once


def test_split_is_reproducible_from_its_seed_and_json_serialisable(amibr_root):
    samples = read_amibr(amibr_root)
    first, again = make_split(samples, n_folds=4, seed=3), make_split(samples, n_folds=4, seed=3)
    assert json.dumps(first) == json.dumps(again)
    assert json.dumps(make_split(samples, n_folds=4, seed=4)) != json.dumps(first)


def test_split_refuses_more_folds_than_slides(amibr_root):
    with pytest.raises(ValueError, match="8 slides cannot make 9"):
        make_split(read_amibr(amibr_root), n_folds=9)


def test_fold_all_trains_on_every_real_sample(amibr_root):
    samples = read_amibr(amibr_root)
    train, val = fold_indices(make_split(samples, n_folds=4), samples, "all")
    assert len(train) == len(samples) and len(val) == 0


# --- the official MIDOG 2025 format -------------------------------------------------------------

MIDOG25_COLUMNS = ["image_id", "filename", "coordinateX", "coordinateY", "Tumor", "Scanner", "Origin",
                   "Species", "expert1", "expert2", "expert3", "majority"]


def write_midog25(root, rows):
    """The official layout: the CSV + MIDOG25_Binary_Classification_Train_Set/<image_id>."""
    images = root / "MIDOG25_Binary_Classification_Train_Set"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (root / "MIDOG25_Atypical_Classification_Train_Set.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MIDOG25_COLUMNS)
        for row in rows:
            writer.writerow(row)
            if not row[0].startswith("missing"):
                Image.fromarray(make_patch(rng, row[-1] == "AMF")).save(images / row[0])
    return root


def midog_row(image_id, slide, label, tumor="canine lung cancer", x=10, y=20):
    return [image_id, slide, x, y, tumor, "3D Histech", "VMU Vienna", "Canine", label, label, "", label]


def test_midog25_reader_keeps_slide_domains_and_label(tmp_path):
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "NMF"),
                                    midog_row("2.png", "202.tiff", "AMF", tumor="human melanoma")])
    first, second = read_dataset("midog25", root)
    assert (first.label, first.slide, first.sample_id) == (0, "201.tiff", "1")
    assert second.label == 1 and second.domain == {"tumor": "human melanoma", "scanner": "3D Histech",
                                                   "origin": "VMU Vienna", "species": "Canine"}
    assert load_images([first, second]).shape == (2, 128, 128, 3)


def test_midog25_reader_names_the_first_bad_row(tmp_path):
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "NMF"), midog_row("2.png", "201.tiff", "XMF")])
    with pytest.raises(DataError, match=r"Train_Set.csv, row 3: unknown label 'XMF'"):
        read_dataset("midog25", root)
    root = write_midog25(tmp_path / "b", [midog_row("1.png", "201.tiff", "NMF"), midog_row("missing.png", "201.tiff", "NMF")])
    with pytest.raises(DataError, match=r"row 3: image .*missing.png not found"):
        read_dataset("midog25", root)


def test_midog25_reader_names_missing_columns(tmp_path):
    (tmp_path / "MIDOG25_Atypical_Classification_Train_Set.csv").write_text("image_id,filename\n1.png,201.tiff\n")
    with pytest.raises(DataError, match=r"columns \['majority', 'Tumor', 'Scanner', 'Origin', 'Species'\] missing"):
        read_dataset("midog25", tmp_path)


def test_midog25_reader_with_slides_points_at_the_original_image(tmp_path):
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "AMF", x=300.5, y=40)])
    slides = tmp_path / "slides"
    slides.mkdir()
    with pytest.raises(DataError, match="row 2: image .*201.tiff not found"):
        read_dataset("midog25", root, slides=slides)
    (slides / "201.tiff").write_bytes(b"")
    (sample,) = read_dataset("midog25", root, slides=slides)
    assert sample.path == slides / "201.tiff" and sample.point == (300.5, 40.0)


# --- plain folders and manifests ----------------------------------------------------------------

def test_folder_reader_takes_slides_from_sub_folders(tmp_path):
    rng = np.random.default_rng(0)
    for relative in ("atypical/slideA/a.png", "normal/slideA/b.png", "normal/slideB/c.png", "AMF/d.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_patch(rng, True)).save(tmp_path / relative)
    samples = {s.sample_id: s for s in read_folder(tmp_path)}
    assert samples["atypical/slideA/a"].slide == "slideA" and samples["atypical/slideA/a"].label == 1
    assert samples["normal/slideB/c"].slide == "slideB" and samples["normal/slideB/c"].label == 0
    assert samples["AMF/d"].slide == "AMF/d.png" and samples["AMF/d"].label == 1  # no sub-folder: its own group


def test_folder_reader_refuses_an_unknown_class_folder(tmp_path):
    (tmp_path / "mitoses").mkdir()
    with pytest.raises(DataError, match="class folder 'mitoses'"):
        read_folder(tmp_path)


def test_manifest_reader_marks_synthetic_images_and_keeps_domains(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for name in ("s0.png", "s1.png"):
        Image.fromarray(make_patch(rng, True)).save(tmp_path / "img" / name)
    (tmp_path / "manifest.csv").write_text(
        "image,label,slide,synthetic,generator\nimg/s0.png,atypical,synthetic:fold0,true,dit\nimg/s1.png,AMF,synthetic:fold0,True,dit\n")
    samples = read_dataset("manifest", tmp_path / "manifest.csv")
    assert all(s.synthetic and s.label == 1 and s.domain == {"generator": "dit"} for s in samples)
    assert samples[0].path == tmp_path / "img" / "s0.png"


def test_duplicate_sample_ids_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(make_patch(rng, True)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,label,slide\na.png,normal,s1\na.png,normal,s2\n")
    with pytest.raises(DataError, match="1 sample ids occur more than once"):
        read_dataset("manifest", tmp_path / "m.csv")


def test_unknown_dataset_kind_lists_the_known_ones():
    with pytest.raises(DataError, match="known: midog25, amibr, folder, manifest"):
        read_dataset("kaggle", "x")


# --- domain-aware splits ------------------------------------------------------------------------

def test_stratifying_by_domain_spreads_each_domain_over_the_folds(amibr_root):
    samples = read_amibr(amibr_root)
    split = make_split(samples, n_folds=2, seed=0, stratify="dataset")
    assert split["stratify"] == "label + dataset"
    for fold in split["folds"]:
        ids = set(fold["val_ids"])
        assert {s.domain["dataset"] for s in samples if s.sample_id in ids} == {"MIDOG21", "TUPAC16"}


def test_leave_one_domain_out_validates_on_exactly_one_domain(amibr_root):
    samples = read_amibr(amibr_root)
    split = make_domain_split(samples, "dataset")
    assert split["n_folds"] == 2 and [f["left_out"] for f in split["folds"]] == [{"dataset": "MIDOG21"}, {"dataset": "TUPAC16"}]
    for fold, entry in enumerate(split["folds"]):
        train, val = fold_indices(split, samples, fold)
        assert {samples[i].domain["dataset"] for i in val} == set(entry["left_out"].values())
        assert entry["left_out"]["dataset"] not in {samples[i].domain["dataset"] for i in train}
    assert split_for(samples, SplitConfig(leave_out="dataset")) == split
    with pytest.raises(ValueError, match="has 1 value"):
        make_domain_split(samples, "species")


def test_synthetic_samples_never_enter_validation(amibr_root, tmp_path):
    samples = read_amibr(amibr_root)
    fake = [Sample(f"synthetic_{i}", samples[0].path, 1, "synthetic:fold0", synthetic=True) for i in range(5)]
    split = make_split(samples, n_folds=4, seed=0)
    assert json.dumps(make_split(samples + fake, n_folds=4, seed=0)) == json.dumps(split)  # the split ignores them
    for fold in range(4):
        train, val = fold_indices(split, samples + fake, fold)
        assert not any((samples + fake)[i].synthetic for i in val)
        assert sum((samples + fake)[i].synthetic for i in train) == 5


def test_patches_cut_from_original_images_match_a_hand_cut_crop(tmp_path):
    rng = np.random.default_rng(3)
    slides = tmp_path / "slides"
    slides.mkdir()
    region = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(region).save(slides / "201.tiff")
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "AMF", x=200, y=150),
                                    midog_row("2.png", "201.tiff", "NMF", x=10, y=290)])
    inner, corner = read_dataset("midog25", root, slides=slides)
    patches = load_images([inner, corner])
    np.testing.assert_array_equal(patches[0], region[150 - 64:150 + 64, 200 - 64:200 + 64])
    expected_corner = np.zeros((128, 128, 3), np.uint8)  # the official black fill beyond the edge
    expected_corner[:64 + 10, 64 - 10:] = region[290 - 64:, :10 + 64]
    np.testing.assert_array_equal(patches[1], expected_corner)


def test_a_point_outside_its_image_names_its_row(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(slides / "201.tiff")
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "AMF", x=50, y=50),
                                    midog_row("2.png", "201.tiff", "AMF", x=500, y=50)])
    with pytest.raises(DataError, match=r"row 3: point \(500.0, 50.0\) lies outside"):
        load_images(read_dataset("midog25", root, slides=slides))
