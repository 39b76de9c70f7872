"""OpenCV's sample data from Debian's opencv-doc (stereonet_ros.opencv_data) and the Aloe pair built from it.

The package is a real ``.deb`` built here (ar archive, xz data tarball), fetched through a real
``apt-get`` stand-in on PATH; the Aloe tests use the real files where ``scripts/setup`` fetched them.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stereonet_ros import opencv_data
from stereonet_ros.evaluation.evaluate import EvaluationError, load_set
from stereonet_ros.opencv_data import OpenCvDataError, ar_members, extract, fetch, find
from stereonet_ros.samples import aloe, half_size, main as samples_main


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b'!<arch>\n')
    for name, content in members:
        header = f'{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}'.encode() + b'`\n'
        assert len(header) == 60
        out += header + content + (b'\n' if len(content) % 2 else b'')
    return bytes(out)


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:xz') as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _deb(files: dict[str, bytes]) -> bytes:
    data = _tar_xz({f'./{opencv_data.MEMBER_FOLDER}/{name}': content for name, content in files.items()}
                   | {'./usr/share/doc/opencv-doc/copyright': b'other file'})
    return _ar([('debian-binary', b'2.0\n'), ('control.tar.xz', _tar_xz({'./control': b'Package: opencv-doc\n'})),
                ('data.tar.xz', data)])


CONTENT = {'a.jpg': b'left image bytes', 'b.png': b'ground truth, odd length'}
DIGESTS = {name: _sha(content) for name, content in CONTENT.items()}


def test_ar_members_reads_names_and_odd_lengths():
    archive = _ar([('one', b'abc'), ('two/', b'de'), ('three', b'f')])  # GNU names end in '/'
    assert list(ar_members(archive)) == [('one', b'abc'), ('two', b'de'), ('three', b'f')]


@pytest.mark.parametrize('archive, message', [
    (b'PK\x03\x04 a zip', 'no ar archive header'),
    (b'!<arch>\n' + b'short header', 'broken ar member header'),
    (_ar([('one', b'abcdef')])[:-2], "member 'one' is truncated"),
])
def test_ar_members_refuses_what_is_not_an_archive(archive, message):
    with pytest.raises(OpenCvDataError, match=message):
        list(ar_members(archive))


def test_extract_writes_the_checked_files(tmp_path):
    paths = extract(_deb(CONTENT), DIGESTS, tmp_path / 'out')
    assert {name: path.read_bytes() for name, path in paths.items()} == CONTENT
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.jpg', 'b.png']  # no partial files


def test_extract_refuses_a_changed_file_and_writes_nothing(tmp_path):
    changed = dict(DIGESTS, **{'b.png': _sha(b'the file we measured')})
    with pytest.raises(OpenCvDataError, match=f'b.png from opencv-doc has SHA-256 {DIGESTS["b.png"]}'):
        extract(_deb(CONTENT), changed, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_extract_names_missing_files_and_missing_data(tmp_path):
    with pytest.raises(OpenCvDataError, match='has no c.txt in usr/share/doc/opencv-doc/examples/data'):
        extract(_deb(CONTENT), dict(DIGESTS, **{'c.txt': _sha(b'')}), tmp_path)
    with pytest.raises(OpenCvDataError, match='no data.tar member'):
        extract(_ar([('debian-binary', b'2.0\n')]), DIGESTS, tmp_path)
    with pytest.raises(OpenCvDataError, match='cannot read data.tar.xz'):
        extract(_ar([('data.tar.xz', b'not xz at all')]), DIGESTS, tmp_path)


def test_find_takes_the_first_folder_whose_files_all_match(tmp_path):
    first, second = tmp_path / 'first', tmp_path / 'second'
    extract(_deb(CONTENT), DIGESTS, first)
    extract(_deb(CONTENT), DIGESTS, second)
    (first / 'b.png').write_bytes(b'edited')  # one changed file disqualifies the whole folder
    assert find(DIGESTS, [first, second]) == {name: second / name for name in CONTENT}
    (second / 'a.jpg').unlink()
    with pytest.raises(OpenCvDataError, match='run `python -m stereonet_ros.opencv_data`'):
        find(DIGESTS, [first, second])


def _fake_apt_get(folder: Path, script: str) -> None:
    folder.mkdir()
    path = folder / 'apt-get'
    path.write_text('#!/bin/sh\n' + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_fetch_downloads_once_into_the_cache(tmp_path, monkeypatch):
    deb = tmp_path / 'package.deb'
    deb.write_bytes(_deb(CONTENT))
    calls = tmp_path / 'calls'
    _fake_apt_get(tmp_path / 'bin', f'echo "$@" >> {calls}\ncp {deb} opencv-doc_4.6.0+dfsg-12_all.deb\n')
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path / 'data'))
    paths = fetch(DIGESTS)
    assert paths == {name: tmp_path / 'data' / 'opencv-samples' / name for name in CONTENT}
    assert fetch(DIGESTS) == paths
    assert calls.read_text() == 'download opencv-doc\n'  # the second call found the files


def test_fetch_failure_is_one_line_and_main_exits_1(tmp_path, monkeypatch, capsys):
    _fake_apt_get(tmp_path / 'bin', 'echo "E: Unable to locate package opencv-doc" >&2\nexit 100\n')
    monkeypatch.setenv('PATH', str(tmp_path / 'bin'))
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path / 'data'))
    with pytest.raises(OpenCvDataError, match='^apt-get download opencv-doc failed: E: Unable to locate package'):
        fetch(DIGESTS)
    assert opencv_data.main([]) == 1
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'Unable to locate package opencv-doc' in error


def test_a_download_that_hangs_is_given_up_with_one_line(tmp_path, monkeypatch):
    _fake_apt_get(tmp_path / 'bin', 'exec sleep 30\n')  # exec: the timeout's kill reaches the sleep
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path / 'data'))
    monkeypatch.setattr(opencv_data, 'DOWNLOAD_TIMEOUT_S', 0.5)
    with pytest.raises(OpenCvDataError, match=r'^apt-get download opencv-doc gave no answer within 0\.5 s$'):
        fetch(DIGESTS)
    assert not (tmp_path / 'data').exists()


def test_half_size_averages_blocks_and_samples_the_truth():
    left = np.zeros((5, 7, 3), np.uint8)  # odd sizes: the last row and column are dropped
    left[0:2, 0:2, 0] = [[0, 1], [1, 1]]  # mean 0.75 -> 1
    left[0:2, 2:4, 1] = [[10, 11], [10, 10]]  # mean 10.25 -> 10
    left[2:4, 4:6, 2] = [[255, 254], [255, 255]]  # mean 254.75 -> 255
    right = left[:, ::-1].copy()
    truth = np.full((5, 7), 60, np.uint8)
    truth[0:2, 0:2] = [[43, 90], [90, 90]]  # a block across a depth edge keeps its top-left value
    truth[2, 2] = 211
    truth[0, 4] = 0  # unknown
    truth[:, 6] = 77  # the dropped column
    sample = half_size(left, right, truth, 'hand-made')
    assert sample.left.shape == (2, 3, 3) and sample.right.shape == (2, 3, 3)
    assert sample.left[0, 0].tolist() == [1, 0, 0] and sample.left[0, 1].tolist() == [0, 10, 0]
    assert sample.left[1, 2].tolist() == [0, 0, 255]
    assert sample.right[1, 0].tolist() == [0, 0, 127]  # mirrored: (0 + 254 + 0 + 255) / 4 = 127.25
    assert sample.disparity.tolist() == [[21.5, 30.0, np.inf], [30.0, 105.5, 30.0]]
    with pytest.raises(ValueError, match='expected two'):
        half_size(left, right[:4], truth, 'mismatched')


def _aloe_or_skip():
    try:
        return aloe()
    except OpenCvDataError as err:
        pytest.skip(f'Aloe not on this machine (scripts/setup fetches it): {err}')


def test_aloe_ground_truth_matches_its_images():
    sample = _aloe_or_skip()
    assert sample.left.shape == sample.right.shape == (555, 641, 3)
    known = np.isfinite(sample.disparity)
    assert sample.disparity[known].min() == 21.5 and sample.disparity[known].max() == 105.5
    assert 0.96 < known.mean() < 0.97
    # The source's scale, checked against the images: the right view warped by the ground truth matches
    # the left best at factor 1 (in half-size pixels), not at the full size's 2 or a few percent off.
    gray = [image.astype(np.float32).mean(axis=2) for image in (sample.left, sample.right)]
    rows, columns = np.nonzero(known)

    def mismatch(factor: float) -> float:
        source = np.clip(np.rint(columns - factor * sample.disparity[rows, columns]), 0, gray[1].shape[1] - 1)
        return float(np.median(np.abs(gray[0][rows, columns] - gray[1][rows, source.astype(int)])))

    assert mismatch(1.0) < min(mismatch(0.95), mismatch(1.05), mismatch(2.0), mismatch(0.5))


def test_evaluate_loads_the_aloe_set():
    sample = _aloe_or_skip()
    [frame] = load_set('aloe', 0, 192.0, 3)
    assert frame.name == sample.name == 'middlebury2006-aloe-H' and frame.left.dtype == np.float32
    assert np.array_equal(frame.disparity, sample.disparity)


def test_evaluate_says_how_to_get_aloe_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path))
    monkeypatch.setattr(opencv_data, 'SYSTEM_FOLDER', tmp_path / 'not-installed')
    with pytest.raises(EvaluationError, match=r'^aloe: OpenCV sample data .* not found .*opencv_data'):
        load_set('aloe', 0, 192.0, 3)


def test_samples_cli_writes_aloe_or_says_why_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('STEREONET_ROS_DATA_DIR', str(tmp_path / 'empty'))
    monkeypatch.setattr(opencv_data, 'SYSTEM_FOLDER', tmp_path / 'not-installed')
    assert samples_main([str(tmp_path / 'out'), '--pair', 'aloe']) == 1
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and error.startswith('python -m stereonet_ros.samples: OpenCV sample data')
