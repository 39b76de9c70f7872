"""OpenCV's example data from Debian's ``opencv-doc`` package: the Middlebury 2006 Aloe pair and its ground truth.

Besides Motorcycle (in scikit-image), the one real stereo pair with ground truth that a machine with
nothing but the PyPI and Debian registries can get: ``opencv-doc`` ships OpenCV's sample data, among it
``aloeL.jpg``, ``aloeR.jpg`` and ``aloeGT.png`` (Middlebury 2006 Aloe at full size, 1282x1110; the
ground truth is the left view's disparity in pixels, 0 where unknown). Nothing is committed: the files
are read from the installed package (``apt install opencv-doc``) or from a cache that

    python -m stereonet_ros.opencv_data      # apt-get download opencv-doc; keep the three files

fills (``$STEREONET_ROS_DATA_DIR``, else ``$XDG_CACHE_HOME/stereonet_ros``, else
``~/.cache/stereonet_ros``). Every file is checked against its SHA-256 before use, so a different
package version cannot change what a score means.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

PACKAGE: Final = 'opencv-doc'
MEMBER_FOLDER: Final = 'usr/share/doc/opencv-doc/examples/data'
"""Where the package installs its sample data (and where its data archive holds it, below ``./``)."""
SYSTEM_FOLDER: Final = Path('/') / MEMBER_FOLDER

ALOE_FILES: Final[Mapping[str, str]] = {
    # As opencv-doc 4.6.0+dfsg-12 (Debian 12) ships them; another version's files are refused if they differ.
    'aloeL.jpg': 'cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee',
    'aloeR.jpg': '9b23100df31a846bc6e6a6545563b2b4120b948c9835c7d36cde00af77f4503e',
    'aloeGT.png': '39ce4f3cb48d797d1091c5152f93361d8104298c337f8a1c134d87dda3442c04',
}

FETCH_COMMAND: Final = 'python -m stereonet_ros.opencv_data'
DOWNLOAD_TIMEOUT_S = 600.0
"""Longest wait for ``apt-get download`` (96 MB): a machine whose registry cannot be reached must not hang
``scripts/setup``."""


class OpenCvDataError(Exception):
    """The sample data is missing, does not match its checksum, or could not be fetched."""


def cache_folder() -> Path:
    """Where :func:`fetch` keeps the files: ``$STEREONET_ROS_DATA_DIR``, else the XDG cache."""
    explicit = os.environ.get('STEREONET_ROS_DATA_DIR')
    if explicit:
        return Path(explicit) / 'opencv-samples'
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'stereonet_ros' / 'opencv-samples'


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _holds(folder: Path, files: Mapping[str, str]) -> bool:
    return all((folder / name).is_file() and _sha256((folder / name).read_bytes()) == digest
               for name, digest in files.items())


def find(files: Mapping[str, str] = ALOE_FILES, folders: Sequence[Path] | None = None) -> dict[str, Path]:
    """The paths of ``files`` (name -> SHA-256) in the first folder that holds all of them unchanged.

    ``folders``: where to look, in order; default the cache, then the installed package's folder.

    Raises:
        OpenCvDataError: no folder holds them all with the right checksums (says how to fetch them).
    """
    searched = list(folders) if folders is not None else [cache_folder(), SYSTEM_FOLDER]
    for folder in searched:
        if _holds(folder, files):
            return {name: folder / name for name in files}
    raise OpenCvDataError(f'OpenCV sample data ({", ".join(files)}) not found in '
                          f'{" or ".join(str(f) for f in searched)}; run `{FETCH_COMMAND}` '
                          f'(downloads Debian\'s {PACKAGE}) or `apt install {PACKAGE}`')


def missing(files: Mapping[str, str] = ALOE_FILES) -> str | None:
    """Why :func:`find` cannot find ``files`` (its error's message), or None when this machine has them."""
    try:
        find(files)
    except OpenCvDataError as err:
        return str(err)
    return None


def ar_members(archive: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each member of a Unix ``ar`` archive (the format of a ``.deb``).

    Raises:
        OpenCvDataError: not an ``ar`` archive, or truncated.
    """
    magic = b'!<arch>\n'
    if not archive.startswith(magic):
        raise OpenCvDataError('not a Debian package: no ar archive header')
    offset = len(magic)
    while offset < len(archive):
        header = archive[offset:offset + 60]
        if len(header) < 60 or header[58:60] != b'`\n':
            raise OpenCvDataError(f'not a Debian package: broken ar member header at byte {offset}')
        name = header[:16].decode('ascii', 'replace').strip().rstrip('/')
        try:
            size = int(header[48:58].decode('ascii').strip())
        except ValueError as err:
            raise OpenCvDataError(f'not a Debian package: bad member size at byte {offset}') from err
        start = offset + 60
        if start + size > len(archive):
            raise OpenCvDataError(f'not a Debian package: member {name!r} is truncated')
        yield name, archive[start:start + size]
        offset = start + size + (size % 2)  # members are padded to an even length


def extract(deb: bytes, files: Mapping[str, str], destination: Path) -> dict[str, Path]:
    """Write ``files`` (name -> SHA-256) from the package's sample-data folder into ``destination``.

    Each file is checked before it is written, and written under a temporary name first, so a
    failure leaves no partial or wrong file behind.

    Raises:
        OpenCvDataError: no data archive (or one Python cannot decompress), a file missing from it, or a
            file whose checksum differs.
    """
    data = next(((name, content) for name, content in ar_members(deb) if name.startswith('data.tar')), None)
    if data is None:
        raise OpenCvDataError('not a Debian package: no data.tar member')
    wanted = {f'./{MEMBER_FOLDER}/{name}': name for name in files}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data[1]), mode='r:*') as archive:
            for member in archive:
                name = wanted.get(member.name) or wanted.get(f'./{member.name}')
                if name is None or not member.isfile():
                    continue
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file always has content
                found[name] = handle.read()
    except tarfile.TarError as err:
        raise OpenCvDataError(f'cannot read {data[0]}: {err}') from err
    missing = [name for name in files if name not in found]
    if missing:
        raise OpenCvDataError(f'{PACKAGE} has no {", ".join(missing)} in {MEMBER_FOLDER}')
    for name, digest in files.items():
        if _sha256(found[name]) != digest:
            raise OpenCvDataError(f'{name} from {PACKAGE} has SHA-256 {_sha256(found[name])}, expected {digest}')
    destination.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in files:
        partial = destination / f'.{name}.partial'
        partial.write_bytes(found[name])
        partial.replace(destination / name)
        paths[name] = destination / name
    return paths


def download(folder: Path) -> bytes:
    """``apt-get download opencv-doc`` into ``folder``; the package's bytes.

    Raises:
        OpenCvDataError: no ``apt-get``, it failed (its last line of output in the message), or it took longer
            than :data:`DOWNLOAD_TIMEOUT_S`.
    """
    apt_get = shutil.which('apt-get')
    if apt_get is None:
        raise OpenCvDataError(f'apt-get not found: install {PACKAGE} with your package manager instead')
    try:
        result = subprocess.run([apt_get, 'download', PACKAGE], cwd=folder, capture_output=True, text=True,
                                check=False, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise OpenCvDataError(f'apt-get download {PACKAGE} gave no answer within {err.timeout:g} s') from err
    debs = sorted(folder.glob(f'{PACKAGE}_*.deb'))
    if result.returncode != 0 or not debs:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f'exit status {result.returncode}'
        raise OpenCvDataError(f'apt-get download {PACKAGE} failed: {reason}')
    return debs[0].read_bytes()


def fetch(files: Mapping[str, str] = ALOE_FILES, destination: Path | None = None) -> dict[str, Path]:
    """``files`` in ``destination`` (default :func:`cache_folder`), downloading the package only when
    they are not there already.

    Raises:
        OpenCvDataError: as :func:`download` and :func:`extract`.
    """
    destination = destination if destination is not None else cache_folder()
    if _holds(destination, files):
        return {name: destination / name for name in files}
    with tempfile.TemporaryDirectory(prefix='stereonet-opencv-doc-') as scratch:
        return extract(download(Path(scratch)), files, destination)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m stereonet_ros.opencv_data', description=__doc__.splitlines()[0])
    parser.add_argument('--destination', type=Path, default=None,
                        help=f'where to keep the files (default: {cache_folder()})')
    arguments = parser.parse_args(argv)
    try:
        paths = fetch(destination=arguments.destination)
    except (OpenCvDataError, OSError) as err:  # OSError: the destination cannot be written
        print(f'stereonet_ros.opencv_data: {err}', file=sys.stderr)
        return 1
    print(f'stereonet_ros.opencv_data: Middlebury 2006 Aloe in {next(iter(paths.values())).parent}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
