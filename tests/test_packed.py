import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import decode_image

from abaw_ce.data.packed import PackedFaces, PackedWriter, pack_image_files, read_index, read_meta
from abaw_ce.errors import InputError

# Not square, so a swapped height/width shows up.
HEIGHT, WIDTH = 24, 32
COUNT = 10


def random_crops(count, height=HEIGHT, width=WIDTH, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def folder_image(path):
    """What a folder-of-files loader returns: PIL-decoded RGB as a uint8 CHW tensor."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def png_store(tmp_path_factory):
    """PNG files (lossless) of the store's size and the store packed from them."""
    root = tmp_path_factory.mktemp("packed")
    paths = []
    for i, crop in enumerate(random_crops(COUNT)):
        paths.append(root / "frames" / f"{i:05d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(crop).save(paths[-1])
    store = pack_image_files(paths, root / "store", HEIGHT, WIDTH,
                             extra_columns={"frame": list(range(COUNT))})
    return store, paths


def small_store(path, count=4, **writer_options):
    with PackedWriter(path, HEIGHT, WIDTH, **writer_options) as writer:
        writer.add_batch(random_crops(count), [f"k{i}" for i in range(count)])
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's decoders, only used as a reference
def test_packed_loading_equals_folder_loading(png_store):
    store, paths = png_store
    faces = PackedFaces(store)
    assert len(faces) == len(paths)
    for i, path in enumerate(paths):
        image = faces[i]
        assert image.dtype == torch.uint8 and image.shape == (3, HEIGHT, WIDTH) and image.is_contiguous()
        assert torch.equal(image, folder_image(path))
    assert torch.equal(faces[0], decode_image(str(paths[0])))
    indices = [7, 2, 2, 9, 0, -1]
    batch = faces.get_batch(indices)
    assert batch.shape == (len(indices), 3, HEIGHT, WIDTH)
    assert torch.equal(batch, torch.stack([folder_image(paths[i]) for i in indices]))


def test_pack_image_files_resizes_with_pil_bilinear(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(random_crops(1, 40, 50)[0]).save(path)
    store = pack_image_files([path], tmp_path / "store", HEIGHT, WIDTH, keys=["only"])
    expected = np.array(Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR))
    assert torch.equal(PackedFaces(store)[0], torch.from_numpy(expected).permute(2, 0, 1))
    assert read_index(store)["key"].tolist() == ["only"]


def test_index_columns_and_meta_round_trip(tmp_path):
    crops = random_crops(3)
    with PackedWriter(tmp_path / "store", HEIGHT, WIDTH, extra_meta={"aligner": "test", "margin": 0.2}) as writer:
        writer.add(crops[0], "001", path="a/NA.jpg", frame=7, source="affwild2")
        writer.add_batch(crops[1:], ["NA", "v2/0003"], path=["b.jpg", "c.jpg"], frame=[8, 9],
                         source=["c-expr", "affwild2"])
    index = read_index(tmp_path / "store")
    assert list(index.columns) == ["row", "key", "path", "frame", "source"]
    assert index["row"].tolist() == [0, 1, 2]
    assert index["key"].tolist() == ["001", "NA", "v2/0003"]  # keys stay verbatim strings
    assert index["path"].tolist() == ["a/NA.jpg", "b.jpg", "c.jpg"]
    assert index["frame"].tolist() == [7, 8, 9]
    assert index["source"].tolist() == ["affwild2", "c-expr", "affwild2"]
    meta = read_meta(tmp_path / "store")
    assert meta["format"] == "abaw-ce-packed" and meta["version"] == 1
    assert (meta["count"], meta["height"], meta["width"], meta["channels"], meta["dtype"]) == (3, 24, 32, 3,
                                                                                             "uint8")
    assert meta["extra"] == {"aligner": "test", "margin": 0.2}
    faces = PackedFaces(tmp_path / "store")
    assert torch.equal(faces.get_batch([0, 1, 2]), torch.from_numpy(crops).permute(0, 3, 1, 2))


def test_duplicate_keys_and_bad_images_are_rejected_and_leave_writer_usable(tmp_path):
    crops = random_crops(4)
    with PackedWriter(tmp_path / "store", HEIGHT, WIDTH) as writer:
        writer.add(crops[0], "a")
        with pytest.raises(ValueError, match="'a'"):
            writer.add(crops[1], "a")
        with pytest.raises(ValueError, match="'b'"):
            writer.add_batch(crops[1:3], ["b", "b"])
        with pytest.raises(ValueError, match="'wide'"):
            writer.add(random_crops(1, HEIGHT, WIDTH + 1)[0], "wide")
        with pytest.raises(ValueError, match="'floaty'"):
            writer.add(crops[1].astype(np.float32), "floaty")
        with pytest.raises(ValueError, match="'gray'"):
            writer.add(crops[1][..., 0], "gray")
        writer.add_batch(crops[1:3], ["b", "c"])
    assert read_index(tmp_path / "store")["key"].tolist() == ["a", "b", "c"]
    assert torch.equal(PackedFaces(tmp_path / "store")[2], torch.from_numpy(crops[2]).permute(2, 0, 1))


def test_refuses_existing_store_unless_overwrite(tmp_path):
    store = small_store(tmp_path / "store", count=4)
    with pytest.raises(FileExistsError) as caught:
        PackedWriter(store, HEIGHT, WIDTH)
    assert str(store) in str(caught.value) and "--overwrite" in str(caught.value)
    small_store(store, count=2, overwrite=True)
    assert read_meta(store)["count"] == 2 and len(PackedFaces(store)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no partial or old folders left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_meta(small_store(empty))["count"] == 4  # an empty folder is not "existing data"

    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a packed store"):
        PackedWriter(other, HEIGHT, WIDTH, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_exception_inside_with_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        with PackedWriter(tmp_path / "store", HEIGHT, WIDTH) as writer:
            writer.add_batch(random_crops(2), ["a", "b"])
            assert writer.partial_dir.is_dir()
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_truncated_faces_file_is_reported_with_expected_size(tmp_path):
    store = small_store(tmp_path / "store", count=4)
    faces_file = store / "faces.u8"
    faces_file.write_bytes(faces_file.read_bytes()[:-100])
    expected = 4 * HEIGHT * WIDTH * 3
    with pytest.raises(InputError, match=f"expected {expected} bytes") as caught:
        PackedFaces(store)
    assert caught.value.path == str(faces_file)
    with pytest.raises(InputError, match=f"expected {expected} bytes"):
        read_index(store)


def test_missing_or_foreign_meta_is_reported(tmp_path):
    store = small_store(tmp_path / "store")
    meta_file = store / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(InputError, match="version"):
        read_meta(store)
    meta_file.write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(InputError, match="format"):
        read_meta(store)
    meta_file.unlink()
    with pytest.raises(InputError, match="not found") as caught:
        PackedFaces(store)
    assert caught.value.path == str(meta_file)
    with pytest.raises(InputError, match="not found"):
        read_meta(tmp_path / "nowhere")


def test_damaged_index_is_reported_with_its_line(tmp_path):
    store = small_store(tmp_path / "store", count=3)
    index_file = store / "index.csv"
    index_file.write_text("row,key\n0,k0\n1,k1\n2,k0\n")
    with pytest.raises(InputError, match="'k0' appears more than once") as caught:
        read_index(store)
    assert caught.value.line == 4
    index_file.write_text("row,key\n0,k0\n1,k1\n")
    with pytest.raises(InputError, match="2 rows"):
        read_index(store)
    index_file.unlink()
    with pytest.raises(InputError, match="not found"):
        read_index(store)


def test_dataloader_workers_match_single_process(png_store):
    store, _ = png_store
    faces = PackedFaces(store)
    faces[0]  # opens the memmap in the parent; workers must not depend on it
    assert len(pickle.dumps(faces)) < 10_000  # the memmap is not pickled with the dataset
    in_process = torch.cat(list(DataLoader(faces, batch_size=3)))
    in_workers = torch.cat(list(DataLoader(faces, batch_size=3, num_workers=2)))
    assert in_process.shape == (COUNT, 3, HEIGHT, WIDTH)
    assert torch.equal(in_process, in_workers)
    assert torch.equal(in_process, faces.get_batch(range(COUNT)))


def test_spawned_worker_opens_its_own_memmap(png_store):
    store, _ = png_store
    faces = PackedFaces(store, rows=[4, 2])
    faces[0]
    loader = DataLoader(faces, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    assert torch.equal(next(iter(loader)), faces.get_batch([0, 1]))


def test_rows_subset_and_transform(png_store):
    store, paths = png_store
    subset = PackedFaces(store, rows=[5, 1, 8])
    assert len(subset) == 3
    assert torch.equal(subset[0], folder_image(paths[5]))
    assert torch.equal(subset[-1], folder_image(paths[8]))
    assert torch.equal(subset.get_batch([2, 0]), torch.stack([folder_image(paths[8]), folder_image(paths[5])]))
    assert subset.index["row"].tolist() == [5, 1, 8]
    assert subset.index["frame"].tolist() == [5, 1, 8]
    with pytest.raises(IndexError):
        subset[3]
    with pytest.raises(ValueError, match="row 10"):
        PackedFaces(store, rows=[0, COUNT])

    flipped = PackedFaces(store, transform=lambda image: image.flip(-1).float() / 255, rows=np.array([3]))
    assert torch.equal(flipped[0], folder_image(paths[3]).flip(-1).float() / 255)
    assert torch.equal(next(iter(DataLoader(flipped, batch_size=1)))[0], flipped[0])


def test_corrupt_image_file_is_named(tmp_path, png_store):
    _, paths = png_store
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    with pytest.raises(InputError) as caught:
        pack_image_files([paths[0], corrupt, paths[1]], tmp_path / "store", HEIGHT, WIDTH)
    assert caught.value.path == str(corrupt) and str(corrupt) in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.jpg"]  # no store, no partial folder
