"""W's spectral data, computed once per base weight and cached on disk, keyed by W's content.

    <cache_dir()>/wspectra/v1/<key[:2]>/<key>/top-<k>.safetensors   U (out, k), S (k,), V (in, k)  float64
    <cache_dir()>/wspectra/v1/<key[:2]>/<key>/basis.safetensors      U (out, m): every left singular vector
                                                                     of W, m = min(out, in), float32;
                                                                     S (m,) float64; WtU = Wᵀ U (in, m)
    <cache_dir()>/wspectra/v1/<key[:2]>/<key>/random-<k>-<seed>.safetensors   ‖U_rᵀ W V_r‖_F (Table 7's floor)

key = sha256 of W's dtype, shape and bytes ((out, in), as the analysis sees it): the same W read
from any copy of a checkpoint finds its entry, and a different W can never be served one.

    <cache_dir()>/wspectra/v1/index/<id[:2]>/<id>.json   {"identity": ..., "key": ...}

remembers the key of a tensor under its file identity (path, inode, size, mtime and ctime, tensor
key and byte range: `Checkpoint.identity`), the way git's index remembers file hashes by stat data:
an unchanged file is not hashed again; a rewritten one has a new ctime, so a new identity, and is.
Each record also holds a probe, a hash of its key and of a few rows of the tensor, checked on every
read: a record naming another tensor's key is not trusted, and W is hashed again. The
comparison layer (`lorascope.compare.w_and_delta`) hashes the tensor as stored (bf16: half the bytes of
a float32 copy) and analyses its exact float64 conversion under that key.
`cache_dir()` is $LORASCOPE_CACHE, else ~/.cache/lorascope.

    entry = SpectraCache().entry(W)     # hashes W once
    U, S, V = entry.top(k)              # a cached top-k' with k' ≥ k serves k; else truncated SVD, stored
    U_w = entry.left()                  # W's full left basis, stored once
    U_w, S_w, WtU = entry.basis()       # intruder dimensions: the same file, with σ and Wᵀ U = V Σ

Every file is written to a temporary name and renamed (`run_format.atomic_write`; mode 0666 less
the umask, as for run files), so a reader sees a whole entry or none, and two processes filling the
cache at once each write whole files (the last rename wins; both computed the same numbers).
Each file's header holds its key, kind, shape and a checksum of its tensors (xxh3-128; a sha256 in
entries written before): an entry that does not check out is logged, recomputed and replaced.
The full left basis (and Wᵀ U) is stored in float32 (64 MiB each for a 4096² W, not 128): the
|cos| < ε test of intruder dimensions needs no more, and the freshly computed basis is rounded
the same way, so a cold and a warm analysis give the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from lorascope import models, run_format
from lorascope.analysis import truncated
from lorascope.analysis.amplification import random_projection
from lorascope.errors import LorascopeError, one_line

log = logging.getLogger(__name__)

FORMAT = "lorascope-wspectra"
VERSION = 1
STATS: Counter = Counter()  # "hit", "miss", "corrupt": what the cache did, for tests and benchmarks


def weight_key(W: torch.Tensor) -> str:
    """sha256 hex digest of W's dtype, shape and bytes: the cache key of W's spectral data."""
    W = W.detach().cpu().contiguous()
    h = hashlib.sha256(f"{FORMAT}-{VERSION} {W.dtype} {tuple(W.shape)}\n".encode())
    h.update(memoryview(W.view(torch.uint8).numpy()))
    return h.hexdigest()


PROBE_ROWS = 64


def _probe(key: str, W: torch.Tensor) -> str:
    """A cheap check that `key` is W's: sha256 of the key and of PROBE_ROWS evenly spaced rows of W
    (512 KiB of a 4096² bf16 W, against 32 MiB to hash it whole). An index entry naming another
    tensor's key fails it, so a damaged or crafted index can never serve another W's spectra."""
    W = W.detach().cpu()
    rows = torch.linspace(0, W.shape[0] - 1, min(PROBE_ROWS, W.shape[0])).round().long().unique()
    h = hashlib.sha256(f"{key} {W.dtype} {tuple(W.shape)}\n".encode())
    h.update(memoryview(W[rows].contiguous().view(torch.uint8).numpy()))
    return h.hexdigest()


def _is_key(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


CHECKSUM = "xxh3_128:"  # the prefix of a checksum in an entry's header; a bare hex digest is a sha256


def _checksum(tensors: dict[str, torch.Tensor], algorithm: str = CHECKSUM) -> str:
    """A digest of the tensors' names and bytes, for the header: xxh3-128 (about 8 GB/s, against
    sha256's 0.3-1: a warm `basis` reads 128 MiB per 4096² W, and the check was half its time),
    or, for algorithm "sha256", the bare sha256 hex digest that entries written before carry.
    It guards against damage, not against forgery: the cache's key is W's sha256."""
    import xxhash

    h = xxhash.xxh3_128() if algorithm == CHECKSUM else hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(memoryview(tensors[name].contiguous().view(torch.uint8).numpy()))
    return (CHECKSUM if algorithm == CHECKSUM else "") + h.hexdigest()


def _checks_out(stored, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a header's checksum is the tensors' (an xxh3 one, or an older entry's sha256)."""
    if not isinstance(stored, str):
        return False
    return stored == _checksum(tensors, CHECKSUM if stored.startswith(CHECKSUM) else "sha256")


class SpectraCache:
    """W's spectral data under `root` (default `models.cache_dir() / "wspectra"`)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else models.cache_dir() / "wspectra"

    def entry(self, W: torch.Tensor, key: str | None = None) -> Entry:
        """The cache entry of one W (out, in); `key`: its `weight_key`, if already known, or the
        `weight_key` of the tensor W was converted from exactly (e.g. the bf16 tensor as stored)."""
        return Entry(self, W, key or weight_key(W))

    def folder(self, key: str) -> Path:
        return self.root / f"v{VERSION}" / key[:2] / key

    def key(self, identity: str, W: torch.Tensor, still: Callable[[], str] | None = None) -> str:
        """`weight_key(W)`, remembered under W's file identity (`Checkpoint.identity`): the next read of
        the same unchanged file finds the key without hashing W again (hashing a 4096² bf16 W costs as
        much as reading it). `still`: the identity again, after W was read; the key is remembered
        only if it did not change meanwhile. A missing or unreadable index file costs one hash."""
        name = hashlib.sha256(identity.encode()).hexdigest()
        path = self.root / f"v{VERSION}" / "index" / name[:2] / f"{name}.json"
        try:
            found = json.loads(path.read_text())
            key = found.get("key")
            if found.get("identity") == identity and _is_key(key) and found.get("probe") == _probe(key, W):
                STATS["index-hit"] += 1
                return key
        except (OSError, ValueError, AttributeError):
            pass
        STATS["hashed"] += 1
        key = weight_key(W)
        if still is None or still() == identity:
            text = json.dumps({"identity": identity, "key": key, "probe": _probe(key, W)}, sort_keys=True)
            try:
                run_format.atomic_write(path, lambda tmp: tmp.write_text(text))
            except OSError as e:
                log.warning("could not write %s (%s): W will be hashed again next time", path, e)
        return key


class Entry:
    """One W's cached decompositions. Methods return float64 CPU tensors."""

    def __init__(self, cache: SpectraCache, W: torch.Tensor, key: str):
        if W.ndim != 2:
            raise LorascopeError(f"W must be a 2-D matrix, got shape {tuple(W.shape)}")
        self.cache, self.W, self.key = cache, W, key
        self.folder = cache.folder(key)

    def top(self, k: int, *, device: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W's top-k (U (out, k), S (k,), V (in, k)): from a stored top-k' (k' ≥ k), else computed by
        the truncated SVD (`truncated.weight_top_svd`) and stored."""
        found = self.stored_top(k)
        if found is not None:
            return found
        U, S, V = truncated.weight_top_svd(self.W, int(k), device=device)
        self.put_top(U, S, V)
        return U, S, V

    def stored_top(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """W's top-k from a stored top-k' (k' ≥ k) that checks out, else None (nothing computed);
        counted in STATS as a "hit" or a "miss"."""
        k = int(k)
        if not 1 <= k <= min(self.W.shape):
            raise LorascopeError(f"k must be in 1..{min(self.W.shape)}, got {k}")
        for k_stored, path in self._stored_tops():
            if k_stored >= k:
                found = self._load(path, "top", k_stored)
                if found is not None:
                    STATS["hit"] += 1
                    return found["U"][:, :k], found["S"][:k], found["V"][:, :k]
        STATS["miss"] += 1
        return None

    def put_top(self, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
        """Store W's top-k (U (out, k), S (k,), V (in, k)) as computed elsewhere (e.g. by
        `analysis.amplification.amplifications`, in the same pass as its own products)."""
        k = int(S.shape[0])
        self._save(self.folder / f"top-{k}.safetensors", {"U": U, "S": S, "V": V}, "top", k)

    def left(self, *, device: str = "auto") -> torch.Tensor:
        """All min(out, in) left singular vectors of W, (out, m) by descending σ (stored in float32)."""
        return self.basis(device=device)[0].double()

    def basis(self, *, device: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W = U Σ Vᵀ whole, as intruder dimensions use it (`analysis.w_plus_delta`): U (out, m) every
        left singular vector (float32), σ (m,) (float64), Wᵀ U = V Σ (in, m) (float32, computed from
        the rounded U: one product with W, once per W). Cold and warm return the same tensors."""
        path = self.folder / "basis.safetensors"
        m = min(self.W.shape)
        found = self._load(path, "basis", m) if _is_file(path) else None
        if found is not None:
            STATS["hit"] += 1
            return found["U"], found["S"], found["WtU"]
        STATS["miss"] += 1
        U, S = truncated.left_spectrum(self.W, device=device)
        U = U.float()
        dev = truncated.resolve_device(device)
        W = self.W.detach().to(dev, torch.float32)  # bf16 and float32 W exactly; float64 rounded
        WtU = (U.to(dev).T @ W).T.contiguous().cpu()  # (in, m): short-wide, as truncated.apply
        tensors = {"U": U, "S": S.double(), "WtU": WtU}
        self._save(path, tensors, "basis", m)
        return U, tensors["S"], WtU

    def random_projection(self, k: int, seed: int = 0, *, device: str = "auto") -> float:
        """‖U_rᵀ W V_r‖_F for amplification's seeded random bases (`amplification.random_projection`):
        W's data too, stored so that a warm Table 7 needs one product with W, not two."""
        found = self.stored_random(k, seed)
        if found is not None:
            return found
        value = random_projection(self.W, int(k), int(seed), device=device)
        self.put_random(k, seed, value)
        return value

    def stored_random(self, k: int, seed: int = 0) -> float | None:
        """The stored `random_projection(W, k, seed)`, else None (nothing computed)."""
        path = self.folder / f"random-{int(k)}-{int(seed)}.safetensors"
        found = self._load(path, "random", int(k), seed) if _is_file(path) else None
        if found is None:
            STATS["miss"] += 1
            return None
        STATS["hit"] += 1
        return float(found["proj"][0])

    def put_random(self, k: int, seed: int, value: float) -> None:
        """Store `random_projection(W, k, seed)` = value, computed elsewhere."""
        tensors = {"proj": torch.tensor([float(value)], dtype=torch.float64)}
        self._save(self.folder / f"random-{int(k)}-{int(seed)}.safetensors", tensors, "random", int(k), seed)

    def has(self, kind: str, k: int, seed: int = 0) -> bool:
        """Whether a "top" entry with k' ≥ k, a "random" one of (k, seed) or the "basis" is stored
        (a name, not checked: reading it checks it). Lets a caller plan its work before reading anything."""
        if kind == "top":
            return any(k_stored >= k for k_stored, _ in self._stored_tops())
        name = "basis.safetensors" if kind == "basis" else f"random-{int(k)}-{int(seed)}.safetensors"
        return _is_file(self.folder / name)

    # ------------------------------------------------------------------ files

    def _stored_tops(self) -> list[tuple[int, Path]]:
        found = []
        try:
            for path in self.folder.glob("top-*.safetensors") if self.folder.is_dir() else ():
                k = path.name.removeprefix("top-").removesuffix(".safetensors")
                if k.isdigit():
                    found.append((int(k), path))
        except OSError as e:  # a cache folder this user cannot look into: nothing stored, as for none
            log.warning("cannot read the W-spectra cache %s (%s): computing", self.folder, e.strerror or e)
        return sorted(found)

    def _expected_shapes(self, kind: str, k: int) -> dict[str, tuple[int, ...]]:
        out, n_in = self.W.shape
        if kind == "basis":
            return {"U": (out, k), "S": (k,), "WtU": (n_in, k)}
        if kind == "random":
            return {"proj": (1,)}
        return {"U": (out, k), "S": (k,), "V": (n_in, k)}

    def _header(self, kind: str, k: int, seed: int | None) -> dict:
        header = {"format": FORMAT, "version": VERSION, "kind": kind, "key": self.key}
        header.update(shape=list(self.W.shape), k=k)
        return header if seed is None else {**header, "seed": seed}

    def _save(self, path: Path, tensors: dict[str, torch.Tensor], kind: str, k: int, seed=None) -> None:
        meta = {**self._header(kind, k, seed), "checksum": _checksum(tensors)}
        tensors = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
        try:
            run_format.atomic_write(path, lambda tmp: _write(tmp, tensors, meta))
        except OSError as e:  # a read-only or full cache costs time, never the analysis
            log.warning("could not write %s (%s): W's spectra will be recomputed next time", path, e)

    def _load(self, path: Path, kind: str, k: int, seed=None) -> dict[str, torch.Tensor] | None:
        """The tensors of a stored entry, or None (logged, file removed) if it does not check out."""
        try:
            tensors, meta = run_format.read_tensors(path)
        except (LorascopeError, OSError) as e:
            if not _is_file(path):  # removed by another process between listing and reading, or unreadable
                return None
            return self._corrupt(path, one_line(e))
        expected = self._header(kind, k, seed)
        wrong = [f for f, v in expected.items() if meta.get(f) != v]
        if wrong:
            return self._corrupt(path, f"header fields {wrong} do not match")
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        if shapes != self._expected_shapes(kind, k):
            return self._corrupt(path, f"tensor shapes {shapes}")
        if not _checks_out(meta.get("checksum"), tensors):
            return self._corrupt(path, "checksum mismatch")
        return tensors

    def _corrupt(self, path: Path, why: str) -> None:  # returns None: "nothing usable stored"
        STATS["corrupt"] += 1
        log.warning("corrupt W-spectra cache entry %s (%s): recomputing it", path, why)
        with contextlib.suppress(OSError):  # a read-only cache keeps it; the new one is not stored either
            path.unlink(missing_ok=True)
        return None


def _is_file(path: Path) -> bool:
    """path.is_file(), and False where the cache cannot even be looked into (a folder of mode 000)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _write(tmp: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(tmp), metadata={run_format.HEADER_KEY: json.dumps(meta, sort_keys=True)})
