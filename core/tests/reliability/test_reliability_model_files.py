"""Model files: bit-identical round trips, atomic saves, and clear errors for every bad file.

No file ever executes code on load: pickle-bearing files whose payload would create a marker file
are refused, and the marker is checked (a control run proves the payload is live).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import adcore
import adcore.files
import adcore.persistence
from adcore.base import BaseDetector
from adcore.errors import ModelFileError, NotFittedError
from adcore.persistence import _digest


class RichDetector(BaseDetector):
    """Fitted state of every kind save() handles: 0-dim and shared tensors, an nn.Module, JSON values."""

    def __init__(self, *, input_size: int = 32, width: int = 4, seed: int = 0) -> None:
        self.input_size = input_size
        self.width = width
        self.seed = seed

    def _fit(self, stream) -> None:
        images = stream.materialize()
        self.head_ = nn.Conv2d(3, self.width, 3, padding=1)
        self.mean_ = images.mean(0)
        self.view_ = self.mean_[0]  # shares memory with mean_
        self.scale_ = torch.tensor(2.5)  # 0-dim
        self.flags_ = torch.tensor([True, False])
        self.info_ = {"images": int(images.shape[0]), "layers": ["a", "b"], "ratio": 0.1}

    def _build_modules(self) -> None:
        self.head_ = nn.Conv2d(3, self.width, 3, padding=1)

    def _predict(self, images):
        maps = self.head_(images - self.mean_).pow(2).mean(1) * self.scale_ + self.view_.mean()
        return maps.flatten(1).amax(1), maps


class OtherDetector(RichDetector):
    pass


@pytest.fixture(scope="module")
def rich(normal_images):
    return RichDetector().fit(normal_images)


@pytest.fixture
def saved(rich, tmp_path) -> Path:
    return rich.save(tmp_path / "model.safetensors")


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def _rewrite(path: Path, out: Path, *, resign: bool = True, tensors_fn=None, **changes: str) -> Path:
    """Copy a model file with header fields changed (and the checksum recomputed, as a newer or
    foreign writer would produce it)."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if tensors_fn is not None:
        tensors = tensors_fn(tensors)
    meta.update(changes)
    if resign:
        meta["sha256"] = _digest(tensors, meta)
    out.write_bytes(save(tensors, metadata=meta))
    return out


# -- round trips ---------------------------------------------------------------------------------------------
def test_round_trip_is_bit_identical(rich, saved, normal_images, tmp_path):
    loaded = RichDetector.load(saved)
    before, after = rich.predict(normal_images), loaded.predict(normal_images)
    assert torch.equal(before.pred_score, after.pred_score) and torch.equal(before.anomaly_map, after.anomaly_map)
    assert loaded.scale_.ndim == 0 and loaded.info_ == {"images": 8, "layers": ("a", "b"), "ratio": 0.1}
    assert torch.equal(loaded.flags_, rich.flags_) and torch.equal(loaded.view_, rich.view_)
    # saving the loaded detector again writes the same header fields and the same tensor bytes
    again = loaded.save(tmp_path / "again.safetensors")
    (length_a, header_a), (length_b, header_b) = _header(again), _header(saved)
    assert header_a == header_b
    assert again.read_bytes()[8 + length_a:] == saved.read_bytes()[8 + length_b:]
    # ... and, the header being written with sorted keys, the very same bytes
    assert again.read_bytes() == saved.read_bytes()


def test_identical_training_gives_identical_file_bytes(normal_images, tmp_path):
    # safetensors' own metadata order changes from one save to the next; the file must not
    first = RichDetector().fit(normal_images).save(tmp_path / "first.safetensors").read_bytes()
    for index in range(5):
        assert RichDetector().fit(normal_images).save(tmp_path / f"again{index}.safetensors").read_bytes() == first
    length, header = _header(tmp_path / "first.safetensors")
    keys = list(header)
    assert keys == sorted(keys) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert length % 8 == 0  # tensor data stays 8-byte aligned, as safetensors writes it


def test_round_trip_with_the_example_detector(gaussian, normal_images, tmp_path):
    path = gaussian.save(tmp_path / "g.safetensors")
    for loaded in (type(gaussian).load(path), adcore.load(path)):
        assert torch.equal(loaded.predict(normal_images).anomaly_map, gaussian.predict(normal_images).anomaly_map)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode: the umask applies


def test_save_refuses_a_folder_and_unfitted_detectors(rich, tmp_path):
    with pytest.raises(ModelFileError, match="it is a folder; give a file name such as"):
        rich.save(tmp_path)
    with pytest.raises(NotFittedError):
        RichDetector().save(tmp_path / "x.safetensors")


# -- atomic writes -------------------------------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


class _FailingFile:
    """Wraps the temporary file: writes half the payload, then raises ``error``."""

    def __init__(self, handle, error: BaseException) -> None:
        self.handle, self.error = handle, error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False

    def write(self, payload: bytes) -> None:
        self.handle.write(payload[: len(payload) // 2])
        raise self.error

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.parametrize("failure", ["disk full during write", "fsync fails", "Ctrl-C during write", "rename fails"])
def test_failed_save_keeps_the_previous_file(rich, saved, normal_images, monkeypatch, failure):
    import adcore.files as files  # the one atomic writer persistence.write goes through

    previous = saved.read_bytes()
    real_fdopen = os.fdopen
    if failure == "disk full during write":
        error: type[BaseException] = OSError
        monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode),
                                                                                  OSError(errno.ENOSPC, "No space left on device")))
    elif failure == "Ctrl-C during write":
        error = KeyboardInterrupt
        monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), KeyboardInterrupt()))
    elif failure == "fsync fails":
        error = OSError

        def fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(files.os, "fsync", fsync)
    else:
        error = OSError

        def replace(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(files.os, "replace", replace)
    changed = RichDetector(width=5).fit(normal_images)
    with pytest.raises(error):
        changed.save(saved)
    monkeypatch.undo()
    assert saved.read_bytes() == previous
    assert _leftovers(saved.parent) == []
    assert RichDetector.load(saved).width == 4


def test_failed_first_save_leaves_nothing(rich, tmp_path, monkeypatch):
    import adcore.files as files  # the one atomic writer persistence.write goes through

    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        rich.save(tmp_path / "new.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_fit_leaves_no_model_and_keeps_the_saved_one(saved, normal_images):
    detector = RichDetector.load(saved)

    def interrupted(stream):
        next(iter(stream))
        raise KeyboardInterrupt

    detector._fit = interrupted
    with pytest.raises(KeyboardInterrupt):
        detector.fit(normal_images)
    assert not detector.is_fitted
    with pytest.raises(NotFittedError):
        detector.save(saved)
    assert RichDetector.load(saved).is_fitted


# -- files that must be refused ------------------------------------------------------------------------------
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        adcore.load(tmp_path / "none.safetensors")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"is truncated or empty \(0 bytes\)"):
        adcore.load(tmp_path / "empty")


@pytest.mark.parametrize("keep", ["4 bytes", "8 bytes", "half the header", "header only", "all but 10 bytes"])
def test_truncated_files(saved, tmp_path, keep):
    data = saved.read_bytes()
    length, _ = _header(saved)
    cut = {"4 bytes": 4, "8 bytes": 8, "half the header": 8 + length // 2, "header only": 8 + length,
           "all but 10 bytes": len(data) - 10}[keep]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated"):
        RichDetector.load(path)


def test_tampered_tensor_bytes_fail_the_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="failed its checksum: tensors or parameters were modified"):
        RichDetector.load(path)


def test_tampered_parameters_fail_the_checksum(saved, tmp_path):
    data = saved.read_bytes()
    assert data.count(b'\\"width\\": 4') == 1
    path = tmp_path / "params.safetensors"
    path.write_bytes(data.replace(b'\\"width\\": 4', b'\\"width\\": 9'))  # same length: still parses
    with pytest.raises(ModelFileError, match="failed its checksum"):
        RichDetector.load(path)
    changed = _rewrite(saved, tmp_path / "state.safetensors", resign=False, state=json.dumps({"info_": {}}))
    with pytest.raises(ModelFileError, match="failed its checksum"):
        RichDetector.load(changed)


@pytest.mark.parametrize("kind", ["png", "json", "plain safetensors", "other safetensors metadata", "random bytes",
                                  "huge header claim", "header not json", "missing fields", "bad version"])
def test_wrong_format(saved, tmp_path, write_image, rgb_array, kind):
    from safetensors.torch import save

    path = tmp_path / "file.safetensors"
    if kind == "png":
        path = write_image(tmp_path / "file.png", rgb_array)
    elif kind == "json":
        path.write_text(json.dumps({"format": "adcore-detector"}))
    elif kind == "plain safetensors":
        path.write_bytes(save({"weight": torch.ones(2)}))
    elif kind == "other safetensors metadata":
        path.write_bytes(save({"weight": torch.ones(2)}, metadata={"format": "pt"}))
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "huge header claim":
        path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    elif kind == "header not json":
        path.write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 16)
    elif kind == "missing fields":
        path.write_bytes(save({"w": torch.ones(1)}, metadata={"format": "adcore-detector", "format_version": "1"}))
    else:
        _rewrite(saved, path, format_version="one")
    messages = {"missing fields": r"missing header field\(s\) \['detector', 'target', 'params', 'state', 'sha256'\]",
                "bad version": "invalid format_version 'one'",
                "plain safetensors": "is a safetensors file but not an adcore detector",
                "other safetensors metadata": "is a safetensors file but not an adcore detector"}
    with pytest.raises(ModelFileError, match=messages.get(kind, "truncated|not a safetensors|corrupt header|not an adcore")):
        adcore.load(path)


def test_future_format_version(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "future.safetensors", format_version="2")
    with pytest.raises(ModelFileError, match=r"uses model format v2, newer than this adcore reads \(v1\); upgrade adcore"):
        RichDetector.load(path)


def test_file_of_another_detector_class(saved, tmp_path):
    with pytest.raises(ModelFileError, match=r"holds a 'richdetector' detector \(.*:RichDetector\), not a OtherDetector; "
                                             r"use adcore.load\(path\)"):
        OtherDetector.load(saved)


def test_file_of_an_uninstalled_or_unregistered_plugin(saved, gaussian, tmp_path):
    with pytest.raises(ModelFileError, match=r"holds a 'richdetector' detector .* that no installed plugin registers"):
        adcore.load(saved)
    path = gaussian.save(tmp_path / "g.safetensors")
    gone = _rewrite(path, tmp_path / "gone.safetensors", detector="patchcore_v9", distribution="ad-future",
                    distribution_version="3.0")
    with pytest.raises(ModelFileError, match=r"holds a 'patchcore_v9' detector from ad-future 3.0, which is not installed: "
                                             r"pip install ad-future"):
        adcore.load(gone)
    moved = _rewrite(path, tmp_path / "moved.safetensors", target="ad_example.old:Gaussian")
    with pytest.raises(ModelFileError, match=r"was written by ad_example.old:Gaussian but 'example_gaussian' is now provided "
                                             r"by ad_example.gaussian:GaussianPatchDetector"):
        adcore.load(moved)


def test_file_from_an_incompatible_plugin_version(saved, tmp_path):
    params = json.loads(_header(saved)[1]["__metadata__"]["params"])
    extra = _rewrite(saved, tmp_path / "extra.safetensors", params=json.dumps({**params, "depth": 3}),
                     distribution="ad-rich", distribution_version="2.0")
    with pytest.raises(ModelFileError, match=r"written by ad-rich 2.0 with parameters this installed version of RichDetector "
                                             r"does not accept \(TypeError: .*'depth'"):
        RichDetector.load(extra)
    reshaped = _rewrite(saved, tmp_path / "shape.safetensors",
                        tensors_fn=lambda t: {**t, "head_.weight": torch.zeros(7, 3, 3, 3)})
    # the module the parameters (width=4) build says what the file's tensor must be: named, both shapes (#22)
    with pytest.raises(ModelFileError, match=r"shape.safetensors: tensor 'head_.weight' has shape \(7, 3, 3, 3\) in the "
                                             r"file, but RichDetector's parameters imply \(4, 3, 3, 3\): the file's "
                                             r"tensors disagree with its parameters"):
        RichDetector.load(reshaped)


class DeclaredShapes(RichDetector):
    """Declares what its parameters imply for its plain tensors (``None``: a free dimension)."""

    def expected_state_shapes(self) -> dict:
        return {"mean_": (3, self.input_size, self.input_size), "flags_": (None,)}


def test_plain_tensors_are_checked_against_the_shapes_the_parameters_imply(normal_images, tmp_path):
    saved = DeclaredShapes().fit(normal_images).save(tmp_path / "declared.safetensors")
    assert DeclaredShapes.load(saved).mean_.shape == (3, 32, 32)
    params = json.loads(_header(saved)[1]["__metadata__"]["params"])
    # parameters re-signed to another input size, tensors left as they were
    resized = _rewrite(saved, tmp_path / "resized.safetensors", params=json.dumps({**params, "input_size": 64}))
    with pytest.raises(ModelFileError, match=r"tensor 'mean_' has shape \(3, 32, 32\) in the file, but DeclaredShapes's "
                                             r"parameters imply \(3, 64, 64\)"):
        DeclaredShapes.load(resized)
    flat = _rewrite(saved, tmp_path / "flat.safetensors", tensors_fn=lambda t: {**t, "flags_": torch.ones(2, 2).bool()})
    with pytest.raises(ModelFileError, match=r"tensor 'flags_' has shape \(2, 2\) in the file, but .* imply \('any',\)"):
        DeclaredShapes.load(flat)


# -- no code execution -------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 4", "pickle protocol 0"])
def test_pickle_bearing_files_never_run(tmp_path, writer):
    marker, control = tmp_path / "pwned", tmp_path / "control-pwned"
    path = tmp_path / "model.safetensors"
    if writer == "torch.save":
        torch.save({"state": _Payload(marker)}, path)
        torch.save({"state": _Payload(control)}, tmp_path / "control.pt")
        torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is live ...
    else:
        protocol = 4 if writer.endswith("4") else 0
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
        pickle.loads(pickle.dumps(_Payload(control), protocol=protocol))
    assert control.exists()  # ... so refusing it below is what keeps the marker away
    for load in (adcore.load, RichDetector.load):
        with pytest.raises(ModelFileError, match="pickle/torch.save file. adcore never unpickles|truncated or not a safetensors"):
            load(path)
    assert not marker.exists()


@pytest.mark.parametrize("length", [0x0480, 0x0580])
def test_header_lengths_that_look_like_a_pickle_opcode_still_load(saved, tmp_path, length):
    """A safetensors header length whose bytes start 0x80 0x02..0x05 must not be taken for a pickle."""
    probe = _rewrite(saved, tmp_path / "probe.safetensors", resign=False, padding="")
    size = _header(probe)[0]
    json_size = len(probe.read_bytes()[8:8 + size].rstrip(b" "))  # safetensors pads the JSON to 8 bytes
    assert json_size < length
    path = _rewrite(saved, tmp_path / "padded.safetensors", resign=False, padding="x" * (length - json_size))
    assert _header(path)[0] == length and path.read_bytes()[:2] == bytes([0x80, length >> 8])
    assert RichDetector.load(path).is_fitted
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=rf"is truncated \(its header claims {length} bytes, the file has 92"):
        RichDetector.load(cut)


def test_numpy_scalar_parameters_are_saved_as_json(normal_images, tmp_path):
    import numpy as np

    detector = RichDetector(width=np.int64(3)).fit(normal_images)
    loaded = RichDetector.load(detector.save(tmp_path / "np.safetensors"))
    assert loaded.width == 3 and type(loaded.width) is int
    assert torch.equal(loaded.predict(normal_images).pred_score, detector.predict(normal_images).pred_score)
    detector.width = object()
    with pytest.raises(ModelFileError, match="parameter 'width' of type object cannot be written to a model file"):
        detector.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


# -- the file format on its own (adcore.persistence) ---------------------------------------------------------
def test_the_format_round_trips_tensors_and_header_without_a_detector(tmp_path):
    from adcore import persistence

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor(True), "tied": torch.zeros(4)}
    tensors["view"] = tensors["tied"][:2]  # shares memory: written as a copy
    header = {"detector": "thing", "target": "pkg.mod:Thing", "params": {"size": (3, 4), "path": Path("x/y")},
              "state": {"info": {"k": [1, 2]}}}
    path = persistence.write(tmp_path / "t.safetensors", tensors, header)
    read_tensors, read_header = persistence.read(path)
    assert sorted(read_tensors) == ["a", "b", "tied", "view"] and torch.equal(read_tensors["b"], tensors["b"])
    assert read_header["params"] == {"size": [3, 4], "path": "x/y"} and read_header["state"] == {"info": {"k": [1, 2]}}
    assert (read_header["distribution"], read_header["distribution_version"]) == ("unknown", "unknown")
    assert read_header["format"] == "adcore-detector" and read_header["format_version"] == 1
    assert read_header["adcore_version"] == adcore.__version__
    assert persistence.read_header(path) == read_header
    with pytest.raises(ModelFileError, match=r"header field\(s\) \['colour'\] are not part of the adcore-detector format"):
        persistence.write(tmp_path / "u.safetensors", tensors, {**header, "colour": "red"})
    with pytest.raises(ModelFileError, match="header field 'target' must be a non-empty string"):
        persistence.write(tmp_path / "u.safetensors", tensors, {**header, "target": None})
    assert not (tmp_path / "u.safetensors").exists()


def test_the_format_knows_no_detector_and_no_plugin_host():
    import ast

    import adcore.persistence as persistence

    tree = ast.parse(Path(persistence.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name.startswith(("adcore.base", "adcore.plugins", "adcore.factory"))}
    assert "adcore" not in imported  # nor the package's front door
    # the one atomic writer, still importable here for plugins that import it from persistence
    assert persistence.atomic_write_bytes is adcore.files.atomic_write_bytes
    assert "atomic_write_bytes" not in persistence.__all__


def _deep_file(path: Path, *, depth: int, inside: str) -> Path:
    """A safetensors-shaped file whose header (or whose params string) is ``depth`` nested brackets."""
    nested = "[" * depth + "]" * depth
    if inside == "header":
        text = '{"__metadata__":{"format":"adcore-detector"},"x":' + nested + "}"
    else:
        meta = {"format": "adcore-detector", "format_version": "1", "detector": "d", "target": "m:C",
                "params": '{"a": ' + nested + "}", "state": "{}", "sha256": "0"}
        text = json.dumps({"__metadata__": meta})
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize("inside", ["header", "params"])
def test_a_header_of_nested_brackets_is_a_model_file_error_not_a_recursion_error(tmp_path, inside):
    path = _deep_file(tmp_path / "deep.safetensors", depth=200_000, inside=inside)  # about 400 KB
    assert path.stat().st_size > 400_000
    what = "header" if inside == "header" else "parameter block"
    with pytest.raises(ModelFileError, match=rf"has a corrupt {what}: its JSON nests more than 64 levels deep; it is "
                                             rf"damaged"):
        adcore.load(path)
    with pytest.raises(ModelFileError):  # the class path reads tensors and checksum first; still no RecursionError
        RichDetector.load(path)
    beyond = _deep_file(tmp_path / "beyond.safetensors", depth=70, inside=inside)
    with pytest.raises(ModelFileError, match=rf"has a corrupt {what}: its JSON nests more than 64 levels deep"):
        adcore.load(beyond)
    shallow = _deep_file(tmp_path / "shallow.safetensors", depth=8, inside=inside)
    with pytest.raises(ModelFileError) as info:  # within the limit: refused for its other faults, not its depth
        adcore.load(shallow)
    assert "levels deep" not in str(info.value)


def test_brackets_inside_strings_do_not_count_as_nesting(normal_images, tmp_path):
    detector = RichDetector().fit(normal_images)
    detector.info_ = {"note": "[" * 500 + "{" * 500 + '\\"]'}
    loaded = RichDetector.load(detector.save(tmp_path / "strings.safetensors"))
    assert loaded.info_ == detector.info_


def test_state_nested_deeper_than_the_format_allows_is_refused_at_save(normal_images, tmp_path):
    detector = RichDetector().fit(normal_images)
    value: list = []
    for _ in range(80):
        value = [value]
    detector.info_ = {"deep": value}
    with pytest.raises(ModelFileError, match=r"the state of this detector nest more than 64 levels deep, which a model "
                                             r"file does not allow"):
        detector.save(tmp_path / "deep.safetensors")
    assert not (tmp_path / "deep.safetensors").exists()


def test_header_claiming_more_than_the_size_limit_says_so(tmp_path):
    from adcore.persistence import MAX_HEADER_BYTES

    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 8) + b'{"__metadata__":{}}')
    with pytest.raises(ModelFileError, match=rf"claims a header of {MAX_HEADER_BYTES + 8} bytes, more than a model file "
                                             rf"may have \({MAX_HEADER_BYTES}\)"):
        adcore.load(path)


# -- which detector a file needs (adcore.factory) and what the header records (adcore.lookups) --------------
def test_a_file_loads_only_with_the_distribution_that_wrote_it(gaussian, tmp_path):
    from adcore.factory import get_entry

    path = gaussian.save(tmp_path / "g.safetensors")
    header = adcore.persistence.read_header(path)
    entry = get_entry("example_gaussian")
    assert (header["detector"], header["distribution"], header["distribution_version"]) == \
        ("example_gaussian", entry.distribution, entry.version)
    # same name and class, but written by another distribution: never loaded with this one's detector
    foreign = _rewrite(path, tmp_path / "foreign.safetensors", distribution="ad-elsewhere", distribution_version="1.0")
    with pytest.raises(ModelFileError, match=rf"holds a 'example_gaussian' detector from ad-elsewhere 1.0, which is not "
                                             rf"installed: pip install ad-elsewhere \('example_gaussian' is registered by "
                                             rf"{entry.distribution} {entry.version}, a different detector\)"):
        adcore.load(foreign)
    # the distribution is matched like pip matches names (case, '-' and '_')
    spelled = _rewrite(path, tmp_path / "spelled.safetensors", distribution=entry.distribution.upper().replace("-", "_"))
    assert type(adcore.load(spelled)) is type(gaussian)


def test_the_origin_written_into_files_comes_from_the_installed_resolver(rich, tmp_path, monkeypatch):
    from adcore import lookups

    assert lookups._origin_resolver is not None  # installed by adcore.factory at `import adcore`
    monkeypatch.setattr(lookups, "_origin_resolver", None)
    header = adcore.persistence.read_header(rich.save(tmp_path / "default.safetensors"))
    assert (header["detector"], header["distribution"]) == ("richdetector", "unknown")
    lookups.set_origin_resolver(lambda cls: ("rich_one", "ad-rich", "4.5"))
    header = adcore.persistence.read_header(rich.save(tmp_path / "resolved.safetensors"))
    assert (header["detector"], header["distribution"], header["distribution_version"]) == ("rich_one", "ad-rich", "4.5")
    assert RichDetector.load(tmp_path / "resolved.safetensors").is_fitted
