"""``minimaxad download DATASET --root DIR``: the public benchmarks, fetched, checked, unpacked
safely and converted to the layout the readers expect.

Every download is resumable and checked (:mod:`minimaxad.fetch`); the archive is unpacked into a
temporary folder inside ``DIR`` and renamed when complete. Extraction refuses the whole archive
if any member would land outside its folder (an absolute path, ``..``), is a symbolic or hard
link, or is a device or pipe: nothing of such an archive is kept. Datasets that need a form or an
account (MVTec AD 2, GoodsAD, AeBAD-S, Real-IAD, MPDD, MAD) are not downloaded: the command prints where to
get them and how to lay them out.

Nothing outside ``DIR`` is written; the downloaded archive is deleted after a successful
extraction unless ``keep_archive``.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from minimaxad.fetch import download_file

Echo = Callable[[str], None]
URL_ENV = "MINIMAXAD_DATASETS_URL"  # a mirror holding the same archive files (checked alike)


class UnsafeArchiveError(RuntimeError):
    """An archive member would be written outside the target folder, or is a link or device."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark comes from and how it is laid out once here.

    ``size`` / ``sha256``: of the archive, where known (None: not published; the download then
    reports the SHA-256 it computed, to compare with a colleague's or to pin here).
    ``folder``: what ``--data`` is after the download (inside ``--root``); ``format``: ``--format``.
    """

    name: str
    title: str
    license: str
    homepage: str
    format: str
    folder: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    convert: Callable[[Path, Echo], None] | None = None
    instructions: str | None = None

    @property
    def archive_name(self) -> str:
        """File name of the archive: the last part of ``url``, else ``<name>.archive``."""
        return PurePosixPath(self.url or "").name or f"{self.name}.archive"


CC_BY_NC_SA = (
    "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/): non-commercial use only, "
    "attribution, share alike"
)


# -- conversions ---------------------------------------------------------------------------------
def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (no second copy of the images), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def convert_visa(root: Path, echo: Echo) -> None:
    """VisA as released -> ``VisA_pytorch/1cls/<object>/{train,test}/...`` by its ``split_csv/1cls.csv``
    (the split every paper uses); masks binarised to 0/255 PNG. The released files stay."""
    split_file = root / "split_csv" / "1cls.csv"
    if not split_file.is_file():
        raise FileNotFoundError(f"VisA: {split_file} is missing from the archive; cannot build the 1cls split")
    target = root / "VisA_pytorch" / "1cls"
    rows = 0
    with open(split_file, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            obj, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
            kind = "good" if label == "normal" else "bad"
            image = root / row["image"].strip()
            _link_or_copy(image, target / obj / split / kind / image.name)
            if split == "test" and kind == "bad" and row.get("mask", "").strip():
                mask = np.asarray(Image.open(root / row["mask"].strip()).convert("L"))
                out = target / obj / "ground_truth" / "bad" / f"{image.stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(out)
            rows += 1
    echo(f"VisA: {rows} images arranged by split_csv/1cls.csv in {target}")


def convert_mvtec_loco(root: Path, echo: Echo) -> None:
    """MVTec LOCO keeps one folder of masks per test image (``ground_truth/<type>/<id>/000.png``,
    one file per defect region); the readers want one mask per image: their union is written as
    ``ground_truth/<type>/<id>_mask.png`` beside it."""
    merged = 0
    for folder in sorted(root.glob("*/ground_truth/*/*")):
        if not folder.is_dir():
            continue
        parts = [np.asarray(Image.open(p).convert("L")) > 0 for p in sorted(folder.glob("*.png"))]
        if not parts:
            continue
        union = np.logical_or.reduce(parts)
        Image.fromarray((union * 255).astype(np.uint8)).save(folder.parent / f"{folder.name}_mask.png")
        merged += 1
    echo(f"MVTec LOCO: {merged} test images' masks merged into one <id>_mask.png each")


def convert_btad(root: Path, echo: Echo) -> None:
    """BTAD names normal images ``ok`` and defective ones ``ko``; the MVTec reader wants ``good``."""
    renamed = 0
    for folder in sorted(root.glob("*/*/ok")):
        if folder.is_dir() and folder.parent.name in ("train", "test"):
            folder.rename(folder.with_name("good"))
            renamed += 1
    echo(f"BTAD: {renamed} 'ok' folders renamed 'good' (MVTec layout)")


# -- the catalogue -------------------------------------------------------------------------------
# URLs are the publishers' own. The SHA-256 values are the ones published for these exact URLs by
# the anomalib project (its DownloadInfo); archive sizes are not published, so the download is
# checked against the server's Content-Length and the SHA-256.
DATASETS: dict[str, DatasetSource] = {
    "mvtec": DatasetSource(
        "mvtec",
        "MVTec AD (15 categories)",
        CC_BY_NC_SA,
        "https://www.mvtec.com/company/research/datasets/mvtec-ad",
        "mvtec",
        "mvtec_ad",
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
        "mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    ),
    "mvtec_ad2": DatasetSource(
        "mvtec_ad2",
        "MVTec AD 2 (8 categories; validation split, public and private test sets)",
        CC_BY_NC_SA,
        "https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
        "mvtec_ad2",
        "mvtec_ad_2",
        instructions="MVTec AD 2 sits behind a form: fill it in on "
        "https://www.mvtec.com/company/research/datasets/mvtec-ad-2, download the archive and unpack it "
        "so that {root}/mvtec_ad_2/<category>/train/good, validation/good, test_public/{{good,bad,ground_truth}}, "
        "test_private and test_private_mixed exist; then: --format mvtec_ad2 --data {root}/mvtec_ad_2 "
        "(fit calibrates on validation/good). The private test sets are scored by "
        "https://benchmark.mvtec.com, not here.",
    ),
    "visa": DatasetSource(
        "visa",
        "VisA (12 objects)",
        "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
        "https://github.com/amazon-science/spot-diff",
        "visa",
        "visa",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        convert=convert_visa,
    ),
    "mvtec_loco": DatasetSource(
        "mvtec_loco",
        "MVTec LOCO AD (5 categories, logical and structural anomalies)",
        CC_BY_NC_SA,
        "https://www.mvtec.com/company/research/datasets/mvtec-loco",
        "mvtec",
        "mvtec_loco",
        url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/430647091-1646842701/"
        "mvtec_loco_anomaly_detection.tar.xz",
        sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
        convert=convert_mvtec_loco,
    ),
    "btad": DatasetSource(
        "btad",
        "BTAD / BeanTech (3 products)",
        CC_BY_NC_SA,
        "https://github.com/pankajmishra000/VT-ADL",
        "mvtec",
        "btad",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        convert=convert_btad,
    ),
    "mpdd": DatasetSource(
        "mpdd",
        "MPDD, Metal Parts Defect Detection (6 parts)",
        CC_BY_NC_SA,
        "https://github.com/stepanje/MPDD",
        "mvtec",
        "mpdd",
        instructions="MPDD is shared as a OneDrive folder (no stable file URL). Download it from the link on "
        "https://github.com/stepanje/MPDD and unpack it so that {root}/mpdd/<part>/train/good exists "
        "(MVTec layout); then: --format mvtec --data {root}/mpdd",
    ),
    "goodsad": DatasetSource(
        "goodsad",
        "GoodsAD (6 categories of retail goods)",
        CC_BY_NC_SA,
        "https://github.com/jianzhang96/GoodsAD",
        "goodsad",
        "goodsad",
        instructions="GoodsAD is distributed through the links on https://github.com/jianzhang96/GoodsAD (cloud "
        "drives, no stable file URL). Unpack it into {root}/goodsad (<category>/train/good, test/, "
        "ground_truth/); then: --format goodsad --data {root}/goodsad",
    ),
    "aebad": DatasetSource(
        "aebad",
        "AeBAD-S (aero-engine blades)",
        "see the dataset page",
        "https://github.com/zhangzilongc/MMR",
        "aebad",
        "AeBAD",
        instructions="AeBAD is distributed through the links on https://github.com/zhangzilongc/MMR (cloud drives). "
        "Unpack it into {root}/AeBAD (AeBAD_S/train/good, AeBAD_S/test/<defect>/<domain>, "
        "AeBAD_S/ground_truth/...); then: --preset aebad --data {root}/AeBAD",
    ),
    "realiad": DatasetSource(
        "realiad",
        "Real-IAD (30 objects, 5 views)",
        "CC BY-NC-SA 4.0, after the authors approve a request",
        "https://huggingface.co/datasets/REAL-IAD/Real-IAD",
        "realiad",
        "realiad",
        instructions="Real-IAD needs an access request: sign in on https://huggingface.co/datasets/REAL-IAD/Real-IAD "
        "and ask for access; once approved, download realiad_<resolution> (e.g. realiad_512) and "
        "realiad_jsons into {root}/realiad; then: --format realiad --data {root}/realiad",
    ),
    "mad": DatasetSource(
        "mad",
        "MAD-Sim / MAD-Real (LEGO toys, multi-pose)",
        "CC BY-NC-SA 4.0",
        "https://github.com/EricLee0224/PAD",
        "mad",
        "MAD",
        instructions="MAD-Sim and MAD-Real are shared through the cloud-drive links on "
        "https://github.com/EricLee0224/PAD. Unpack them into {root}/MAD (MAD-Sim/<toy>/train/good ...); "
        "then: --preset mad-sim --data {root}/MAD/MAD-Sim",
    ),
}


# -- safe extraction -------------------------------------------------------------------------------
def _safe_relative(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or an error if it could leave it; None for ``.``."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; nothing was extracted")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} climbs out of the target folder with '..'; nothing was extracted"
        )
    return PurePosixPath(*parts) if parts else None


def _members(archive: Path) -> Iterator[tuple[PurePosixPath, bool, Callable]]:
    """``(relative path, is_dir, open)`` for every member, refusing links, devices and escapes."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.filename!r} is a symbolic link; nothing was extracted"
                    )
                relative = _safe_relative(info.filename, archive)
                if relative is not None:
                    yield relative, info.is_dir(), (lambda i=info: zipped.open(i))
        return
    try:
        tar = tarfile.open(archive)  # gz, bz2, xz or plain, detected from the content
    except tarfile.TarError as exc:
        raise RuntimeError(
            f"{archive} is neither a zip nor a tar archive ({exc}); delete it and download again"
        ) from exc
    with tar:
        for member in tar:
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(
                    f"{archive}: member {member.name!r} is a "
                    f"{'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r}); "
                    f"nothing was extracted"
                )
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: member {member.name!r} is a device or pipe; nothing was extracted"
                )
            relative = _safe_relative(member.name, archive)
            if relative is not None:
                yield relative, member.isdir(), (lambda m=member: tar.extractfile(m))


def safe_extract(
    archive: Path, target: Path, *, strip_single_top: bool = True, prepare: Callable[[Path], None] | None = None
) -> Path:
    """Unpack ``archive`` into the new folder ``target`` (which must not exist).

    Extraction goes to ``target.partial`` first; any unsafe member aborts it, deletes what was
    written and raises :class:`UnsafeArchiveError`. One top-level folder holding everything is
    removed (``VisA_20220922/candle`` -> ``target/candle``) when ``strip_single_top``.
    ``prepare(folder)`` (a layout conversion) runs on the unpacked folder before it is renamed
    ``target``, so that ``target`` exists only when it is complete.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists already; remove it (or choose another --root) to extract again")
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    base = partial.resolve()
    try:
        for relative, is_dir, open_member in _members(archive):
            destination = (partial / relative).resolve()
            if destination != base and base not in destination.parents:  # belt and braces
                raise UnsafeArchiveError(f"{archive}: member {relative} resolves outside {target}")
            if is_dir:
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open_member() as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        top = list(partial.iterdir())
        unpacked = top[0] if strip_single_top and len(top) == 1 and top[0].is_dir() else partial
        if prepare is not None:
            prepare(unpacked)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    unpacked.rename(target)
    if unpacked != partial:
        partial.rmdir()
    return target


# -- the command -----------------------------------------------------------------------------------
def download_dataset(
    name: str,
    root: Path,
    *,
    url: str | None = None,
    keep_archive: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> Path | None:
    """Download, check, unpack and convert dataset ``name`` into ``root``; returns the folder to
    pass as ``--data`` (None for datasets that need a manual step: their instructions are printed).

    ``url``: another location of the same archive (a mirror; also ``$MINIMAXAD_DATASETS_URL``, a
    base URL the archive's file name is appended to); the known size and SHA-256 still apply.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    source = DATASETS[key]
    root = Path(root).expanduser()
    target = root / source.folder
    echo(f"{source.title}: {source.homepage}")
    echo(f"license: {source.license}. Downloading means accepting it; cite the dataset's paper when you use it.")
    if source.instructions is not None and not url:
        echo(source.instructions.format(root=root))
        return None
    if target.is_dir() and any(target.iterdir()):
        echo(f"{target} is already here (delete it to download again); use: --format {source.format} --data {target}")
        return target
    mirror = os.environ.get(URL_ENV)
    location = url or (f"{mirror.rstrip('/')}/{source.archive_name}" if mirror else source.url)
    archive = root / source.archive_name
    root.mkdir(parents=True, exist_ok=True)
    echo(f"downloading {location} -> {archive}")
    result = download_file(
        location, archive, size=source.size, sha256=source.sha256, progress=progress, description=source.name, echo=echo
    )
    if source.sha256 is None:
        echo(
            f"no published SHA-256 for this archive: it is {result.sha256} ({result.size} bytes); "
            f"compare it with the publisher's, if they give one"
        )
    else:
        echo(f"SHA-256 checked: {result.sha256}")
    echo(f"unpacking into {target}")
    convert = source.convert
    safe_extract(archive, target, prepare=None if convert is None else (lambda folder: convert(folder, echo)))
    if not keep_archive:
        archive.unlink()
    echo(f"done: --format {source.format} --data {target}")
    return target
