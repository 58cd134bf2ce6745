"""Ingest building blocks without Spark: captions, input expansion, readers, uid rule, images."""
import hashlib
import json

import numpy as np
import pytest

from capmix.errors import InputError
from capmix.images import inspect_image, to_rgb
from capmix.inputs import Unit, expand_braces, expand_inputs, plan_units, safe_relpath
from capmix.readers import read_shard, split_key
from capmix.samples import RowSettings, compute_uid, to_row, unit_rows
from capmix.text import clean_caption
from pools import bad_images, make_folder, make_samples, make_shard, odd_images

SETTINGS = RowSettings(max_chars=50, max_pixels=89_478_485)


# -- captions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, text, warning", [
    (None, None, None),
    ("a  photo\tof\n a cat ", "a photo of a cat", None),
    (b"caf\xc3\xa9", "caf\u00e9", None),                       # UTF-8 bytes
    (b"caf\xe9 au lait", "caf\u00e9 au lait", "not UTF-8"),    # Latin-1 bytes
    ("bell\x07 and\x00 nul\x1b[31m", "bell and nul[31m", "control character"),
    ("cafe\u0301", "caf\u00e9", None),                         # NFD -> NFC
    ("   \x00 ", None, "caption empty"),
    ("x" * 80, "x" * 50, "truncated from 80 to 50"),
])
def test_clean_caption(raw, text, warning):
    got, warnings = clean_caption(raw, 50)
    assert got == text
    if warning is None:
        assert warnings == []
    else:
        assert any(warning in w for w in warnings), warnings


def test_clean_caption_never_raises_on_byte_soup():
    for seed in range(20):
        data = np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes()
        text, _ = clean_caption(data, 100)
        assert text is None or (len(text) <= 100 and all(ord(c) >= 32 for c in text))


# -- inputs -------------------------------------------------------------------------------------
def test_expand_braces():
    assert expand_braces("s/{00008..00011}.tar") == [
        "s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_expand_inputs_reports_every_missing_path_in_one_error(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    assert expand_inputs([str(tmp_path / "*.tar")]) == [str(tmp_path / "a.tar")]
    with pytest.raises(InputError) as info:
        expand_inputs([str(tmp_path / "{a,b,c}.tar"), str(tmp_path / "none*.tar")])
    msg = str(info.value)
    assert "b.tar" in msg and "c.tar" in msg and "none*.tar" in msg and "\n" not in msg


def test_unknown_format_and_empty_folder_are_input_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown input format"):
        plan_units([str(tmp_path / "notes.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no shards, images or parquet"):
        plan_units([str(tmp_path / "empty")])


@pytest.mark.parametrize("name, safe", [
    ("a/b.jpg", "a/b.jpg"), ("./a.jpg", "a.jpg"), ("a/./b/../c.jpg", "a/c.jpg"),
    ("../x.jpg", None), ("/abs/x.jpg", None), ("a/../../x.jpg", None), ("..", None),
    ("C:/x.jpg", None), ("", None),
])
def test_safe_relpath(name, safe):
    assert safe_relpath(name) == safe


def test_folder_units_slice_sorted_entries(tmp_path):
    imgs = {f"d/{i}.png": b"x" for i in range(5)}
    make_folder(tmp_path, imgs, {"d/0.png": "zero", "gone.jpg": "no file", "../up.jpg": "no"})
    units, notes = plan_units([str(tmp_path)], rows_per_unit=2)
    names = [[e["name"] for e in u.entries] for u in units]
    assert names == [["d/0.png", "d/1.png"], ["d/2.png", "d/3.png"], ["d/4.png", "gone.jpg"]]
    assert [u.id for u in units][0].endswith("#files[0:2]")
    assert units[2].entries[1]["file"] is False and units[0].entries[0]["caption"] == "zero"
    assert any("outside the folder" in n for n in notes)
    assert Unit.from_json(units[1].to_json()) == units[1]


# -- webdataset reader --------------------------------------------------------------------------
def test_split_key_follows_webdataset():
    assert split_key("dir/0001.seg.png") == ("dir/0001", "seg.png")
    assert split_key("0001.jpg") == ("0001", "jpg")


def test_shard_reader_groups_members_and_reports_unsafe_ones(tmp_path):
    samples = make_samples(3)
    shard = make_shard(tmp_path, "s", samples, members=[
        ("../escape.jpg", samples[0].image), ("/etc/abs.txt", b"x"),
        (f"{samples[0].key}.txt", b"late caption")])
    unsafe = []
    got = list(read_shard(str(shard), 1 << 20, lambda s, m: unsafe.append((s, m))))
    assert [s.key for s in got] == [s.key for s in samples] + [samples[0].key]
    assert got[0].image == samples[0].image and got[0].text == samples[0].text.encode()
    assert got[0].fields["url"] == samples[0].url  # from the shard parquet
    assert unsafe == [(str(shard), "../escape.jpg"), (str(shard), "/etc/abs.txt")]
    late = got[-1]
    assert late.image is None and late.error and "reappears" in " ".join(late.warnings)


def test_truncated_shard_keeps_the_samples_before_the_damage(tmp_path):
    import tarfile

    shard = make_shard(tmp_path, "s", make_samples(4), parquet=None)
    with tarfile.open(shard) as tar:
        cut = tar.getmember("0001.jpg").offset_data + 100  # inside the second image
    shard.write_bytes(shard.read_bytes()[:cut])
    rows = list(unit_rows(Unit("webdataset", str(shard)), SETTINGS))
    assert [(r["key"], r["status"]) for r in rows] == [("0000", "ok"), (None, "error")]
    assert "s.tar unreadable after 4 member(s)" in rows[-1]["error"]


# -- rows: uid rule, sidecars -------------------------------------------------------------------
def test_uid_rule():
    image, text = b"img", "a cat"
    expected = hashlib.sha256("\x1f".join((
        "capmix-uid-v1", "http://x/1.jpg", hashlib.sha256(image).hexdigest(),
        hashlib.sha256(text.encode()).hexdigest())).encode()).hexdigest()[:32]
    assert compute_uid("http://x/1.jpg", hashlib.sha256(image).hexdigest(), text) == expected
    assert compute_uid("k", None, None) != compute_uid("k", None, "")


def test_sidecar_uid_wins_and_broken_sidecar_still_ingests():
    img = make_samples(1)[0].image
    row = to_row(raw_sample(img, sidecar=json.dumps({"uid": "U1", "url": "http://u"}).encode(),
                            text=b"a caption"), "src", SETTINGS)
    assert (row["uid"], row["url"], row["text"], row["status"]) == ("U1", "http://u",
                                                                    "a caption", "ok")
    broken = to_row(raw_sample(img, sidecar=b'{"uid": "U2", "url": ', text=b"still here"),
                    "src", SETTINGS)
    assert broken["status"] == "ok" and broken["text"] == "still here"
    assert "json sidecar unreadable" in broken["warnings"]
    assert json.loads(broken["meta"])["broken_json"] == '{"uid": "U2", "url": '
    assert broken["uid"] == compute_uid("k", hashlib.sha256(img).hexdigest(), b"still here")


def raw_sample(image, sidecar=None, text=None):
    from capmix.readers import RawSample

    return RawSample(key="k", image=image, ext="jpg", text=text, sidecar=sidecar)


# -- images -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(odd_images()))
def test_odd_images_are_ok_and_normalise_to_rgb(name):
    data, (w, h) = odd_images()[name]
    info = inspect_image(data, 89_478_485)
    assert info.ok and (info.width, info.height) == (w, h)
    rgb = to_rgb(data)
    assert rgb.mode == "RGB" and rgb.size == (w, h)


def test_to_rgb_pixel_values_follow_the_definitions():
    odd = odd_images()
    px = lambda name, xy: to_rgb(odd[name][0]).getpixel(xy)  # noqa: E731
    assert all(abs(a - b) <= 8 for a, b in zip(px("cmyk.jpg", (5, 5)), (255, 0, 0)))
    assert px("palette_transparent.png", (0, 0)) == (255, 255, 255)  # transparent -> white
    assert px("palette_transparent.png", (5, 5)) == (255, 0, 0)
    assert px("animated.gif", (3, 3)) == (255, 0, 0)                 # first frame
    assert px("gray16.png", (0, 0)) == (0, 0, 0) and px("gray16.png", (23, 7)) == (255,) * 3


@pytest.mark.parametrize("name", list(bad_images()))
def test_bad_images_become_readable_errors(name):
    data, fragment = bad_images()[name]
    info = inspect_image(data, 89_478_485)
    assert not info.ok and fragment in info.error.lower()
