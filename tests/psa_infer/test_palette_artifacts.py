import numpy as np
import pytest
from PIL import Image

from psa_infer.artifacts import ArtifactError, load_cam, save_cam, save_npz
from psa_infer.palette import colorize, load_label_png, save_label_png, voc_colormap


def test_voc_colormap_known_entries():
    cmap = voc_colormap()
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[255].tolist() == [224, 224, 192]  # VOC's ignore colour


def test_label_png_round_trip_is_a_palette_image(tmp_path):
    lab = np.array([[0, 1, 2], [255, 20, 3]], np.uint8)
    p = tmp_path / "x.png"
    save_label_png(p, lab)
    assert Image.open(p).mode == "P"
    np.testing.assert_array_equal(load_label_png(p), lab)
    assert colorize(lab).shape == (2, 3, 3)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary name is gone


def test_label_png_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected a label map of shape \(H, W\) uint8"):
        save_label_png(tmp_path / "x.png", np.zeros((2, 2), np.int32))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="got mode RGB"):
        load_label_png(tmp_path / "rgb.png")


def test_cam_round_trip_and_validation(tmp_path):
    cam = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    save_cam(tmp_path / "a.npz", cam, np.array([3, 8]))
    c, k = load_cam(tmp_path / "a.npz", num_classes=20, size=(5, 7))
    np.testing.assert_array_equal(c, cam)
    assert k.tolist() == [3, 8]
    with pytest.raises(ArtifactError, match="spatial size"):
        load_cam(tmp_path / "a.npz", size=(5, 8))
    with pytest.raises(ArtifactError, match=r"keys' must be class ids in 1..5"):
        load_cam(tmp_path / "a.npz", num_classes=5)
    save_npz(tmp_path / "b.npz", cam=np.zeros((21, 353)), keys=np.array([1]))
    with pytest.raises(
        ArtifactError, match=r"expected 'cam' of shape \(K, H, W\) float32, got \(21, 353\) float64"
    ):
        load_cam(tmp_path / "b.npz")
    save_npz(tmp_path / "c.npz", cam=cam, keys=np.array([1, 2, 3]))
    with pytest.raises(ArtifactError, match="'keys' has 3 entries but 'cam' has 2 maps"):
        load_cam(tmp_path / "c.npz")
    (tmp_path / "d.npz").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="not a readable .npz"):
        load_cam(tmp_path / "d.npz")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_cam(tmp_path / "zzz.npz")
