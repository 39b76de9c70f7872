"""Tests for stereonet_ros.data.datasets: tiny fake data sets of every format written into tmp_path."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stereonet_ros.data.datasets import (
    DatasetError,
    KeystoneDataset,
    Kitti2012Dataset,
    Kitti2015Dataset,
    Middlebury2014Dataset,
    PairFolderDataset,
    SceneFlowDataset,
    StereoSample,
    random_crop,
    read_exr_channel,
    read_middlebury_calibration,
)
from stereonet_ros.image_io import write_png
from stereonet_ros.pfm import write_pfm

H, W = 6, 8


def rgb(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def disparity(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 60.0, size=(height, width)).astype(np.float32)


def as_image(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) float tensor -> (H, W, C) array, to compare with what was written."""
    return tensor.permute(1, 2, 0).numpy()


def assert_image(tensor: torch.Tensor, image: np.ndarray) -> None:
    assert tensor.dtype == torch.float32
    expected = image if image.ndim == 3 else image[:, :, None]
    np.testing.assert_array_equal(as_image(tensor), expected.astype(np.float32))


def assert_disparity(sample: StereoSample, side: str, values: np.ndarray, valid: np.ndarray | None = None) -> None:
    disp, mask = sample[f'disp_{side}'], sample[f'valid_{side}']  # type: ignore[literal-required]
    assert disp.shape == (1, *values.shape) and disp.dtype == torch.float32
    assert mask.shape == (1, *values.shape) and mask.dtype == torch.bool
    expected_valid = np.isfinite(values) if valid is None else valid
    np.testing.assert_array_equal(mask[0].numpy(), expected_valid)
    np.testing.assert_array_equal(disp[0].numpy()[expected_valid], values[expected_valid])
    assert torch.isnan(disp[~mask]).all()  # invalid is NaN, never 0


# --- SceneFlow --------------------------------------------------------------------------------------

def make_sceneflow_frame(root: Path, frames: str, disparity_folder: str, relative: str, name: str,
                         seed: int) -> dict[str, np.ndarray]:
    data = {'left': rgb(seed), 'right': rgb(seed + 1), 'disp_left': disparity(seed + 2),
            'disp_right': disparity(seed + 3)}
    for side in ('left', 'right'):
        (root / frames / relative / side).mkdir(parents=True, exist_ok=True)
        (root / disparity_folder / relative / side).mkdir(parents=True, exist_ok=True)
        write_png(root / frames / relative / side / f'{name}.png', data[side])
        write_pfm(root / disparity_folder / relative / side / f'{name}.pfm', data[f'disp_{side}'])
    return data


def test_sceneflow_reads_images_and_both_disparities_exactly(tmp_path: Path) -> None:
    data = make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TRAIN/A/0000', '0006', seed=1)
    dataset = SceneFlowDataset(tmp_path)
    assert len(dataset) == 1 and dataset.has_right_disparity
    sample = dataset[0]
    assert sample['name'] == 'frames_cleanpass/TRAIN/A/0000/left/0006.png'
    assert_image(sample['left'], data['left'])
    assert_image(sample['right'], data['right'])
    assert_disparity(sample, 'left', data['disp_left'])
    assert_disparity(sample, 'right', data['disp_right'])


def test_sceneflow_download_folder_names_map_frames_to_disparity(tmp_path: Path) -> None:
    make_sceneflow_frame(tmp_path, 'driving__frames_cleanpass/frames_cleanpass', 'driving__disparity/disparity',
                         '35mm_focallength/scene_forwards/fast', '0001', seed=2)
    dataset = SceneFlowDataset(tmp_path)
    assert dataset.items[0].disp_left == (tmp_path / 'driving__disparity/disparity/35mm_focallength/'
                                          'scene_forwards/fast/left/0001.pfm')


def test_sceneflow_include_exclude_and_pass_select_frames(tmp_path: Path) -> None:
    make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TRAIN/A/0000', '0006', seed=3)
    make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TEST/A/0000', '0006', seed=4)
    make_sceneflow_frame(tmp_path, 'frames_finalpass', 'disparity', 'TRAIN/B/0001', '0007', seed=5)
    assert [i.name for i in SceneFlowDataset(tmp_path, exclude='TEST').items] == [
        'frames_cleanpass/TRAIN/A/0000/left/0006.png']
    assert [i.name for i in SceneFlowDataset(tmp_path, include='TEST').items] == [
        'frames_cleanpass/TEST/A/0000/left/0006.png']
    assert [i.name for i in SceneFlowDataset(tmp_path, pass_name='finalpass').items] == [
        'frames_finalpass/TRAIN/B/0001/left/0007.png']


def test_sceneflow_without_right_disparity_leaves_the_right_keys_out(tmp_path: Path) -> None:
    make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TRAIN/A/0000', '0006', seed=6)
    (tmp_path / 'disparity/TRAIN/A/0000/right/0006.pfm').unlink()
    sample = SceneFlowDataset(tmp_path)[0]
    assert 'disp_right' not in sample and 'valid_right' not in sample and 'disp_left' in sample
    with pytest.raises(DatasetError, match=r'right_disparity=True but 1 item\(s\) lack it.*right/0006\.pfm'):
        SceneFlowDataset(tmp_path, right_disparity=True)
    assert 'disp_right' not in SceneFlowDataset(tmp_path, right_disparity=False)[0]


def test_sceneflow_errors_name_the_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'SceneFlow root .*nowhere is missing or not a directory'):
        SceneFlowDataset(tmp_path / 'nowhere')
    with pytest.raises(DatasetError, match=r'no \.\.\./frames_cleanpass/\.\.\./left/\*\.png frames found'):
        SceneFlowDataset(tmp_path)
    make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TRAIN/A/0000', '0006', seed=7)
    (tmp_path / 'disparity/TRAIN/A/0000/left/0006.pfm').unlink()
    with pytest.raises(DatasetError, match=r'disparity/TRAIN/A/0000/left/0006\.pfm is missing'):
        SceneFlowDataset(tmp_path)


def test_samples_collate_into_batches(tmp_path: Path) -> None:
    for index in range(3):
        make_sceneflow_frame(tmp_path, 'frames_cleanpass', 'disparity', 'TRAIN/A/0000', f'{index:04d}', seed=10 + index)
    batch = next(iter(DataLoader(SceneFlowDataset(tmp_path), batch_size=2)))
    assert batch['left'].shape == (2, 3, H, W)
    assert batch['disp_left'].shape == (2, 1, H, W)
    assert batch['valid_right'].dtype == torch.bool
    assert batch['name'] == ['frames_cleanpass/TRAIN/A/0000/left/0000.png',
                             'frames_cleanpass/TRAIN/A/0000/left/0001.png']


# --- KITTI ------------------------------------------------------------------------------------------

def kitti_png(values: np.ndarray) -> np.ndarray:
    """Disparity (NaN = none) -> KITTI's uint16 encoding (value * 256, 0 = none)."""
    return np.where(np.isfinite(values), np.round(values * 256.0), 0).astype(np.uint16)


def make_kitti(root: Path, left_dir: str, right_dir: str, disp_dirs: list[str],
               gray: bool = False) -> dict[str, np.ndarray]:
    left, right = rgb(20), rgb(21)
    if gray:
        left, right = left[..., 0], right[..., 0]
    truth = np.round(disparity(22) * 256.0) / 256.0  # exactly representable in the PNG encoding
    truth[0, :3] = np.nan  # no ground truth there
    for folder, image in ((left_dir, left), (right_dir, right)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_png(root / folder / '000000_10.png', image)
        write_png(root / folder / '000000_11.png', image)  # the next frame: must be ignored
    for folder in disp_dirs:
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_png(root / folder / '000000_10.png', kitti_png(truth))
    return {'left': left, 'right': right, 'disp': truth}


def test_kitti_2015_decodes_value_over_256_and_zero_as_invalid(tmp_path: Path) -> None:
    data = make_kitti(tmp_path, 'image_2', 'image_3', ['disp_occ_0'])
    dataset = Kitti2015Dataset(tmp_path)
    assert len(dataset) == 1 and not dataset.has_right_disparity
    sample = dataset[0]
    assert_image(sample['left'], data['left'])
    assert_image(sample['right'], data['right'])
    assert_disparity(sample, 'left', data['disp'])
    assert not sample['valid_left'][0, 0, :3].any()
    assert 'disp_right' not in sample


def test_kitti_2015_noc_and_testing_split(tmp_path: Path) -> None:
    make_kitti(tmp_path, 'image_2', 'image_3', ['disp_noc_0'])
    assert Kitti2015Dataset(tmp_path, disparity='noc').items[0].disp_left == tmp_path / 'disp_noc_0/000000_10.png'
    with pytest.raises(DatasetError, match=r'KITTI 2015 disparity folder .*disp_occ_0 is missing'):
        Kitti2015Dataset(tmp_path)
    assert 'disp_left' not in Kitti2015Dataset(tmp_path, disparity=None)[0]


def test_kitti_2012_colored_and_gray_image_sets(tmp_path: Path) -> None:
    colored = make_kitti(tmp_path, 'colored_0', 'colored_1', ['disp_occ', 'disp_noc'])
    gray = make_kitti(tmp_path, 'image_0', 'image_1', [], gray=True)
    sample = Kitti2012Dataset(tmp_path)[0]
    assert_image(sample['left'], colored['left'])
    assert_disparity(sample, 'left', colored['disp'])
    gray_sample = Kitti2012Dataset(tmp_path, image_set='gray', disparity='noc')[0]
    assert_image(gray_sample['left'], np.repeat(gray['left'][..., None], 3, axis=2))  # gray -> 3 channels
    one_channel = Kitti2012Dataset(tmp_path, image_set='gray', channels=1)[0]
    assert_image(one_channel['right'], gray['right'])


def test_kitti_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'KITTI 2012 left image folder .*colored_0 is missing'):
        Kitti2012Dataset(tmp_path)
    make_kitti(tmp_path, 'image_2', 'image_3', ['disp_occ_0'])
    (tmp_path / 'image_3' / '000000_10.png').unlink()
    with pytest.raises(DatasetError, match=r'image_3/000000_10\.png is missing \(needed by .*image_2/000000_10\.png\)'):
        Kitti2015Dataset(tmp_path)
    with pytest.raises(DatasetError, match='channels must be 1 or 3, got 2'):
        Kitti2015Dataset(tmp_path, disparity=None, channels=2)


def test_kitti_disparity_that_is_not_16_bit_is_refused_when_read(tmp_path: Path) -> None:
    make_kitti(tmp_path, 'image_2', 'image_3', ['disp_occ_0'])
    write_png(tmp_path / 'disp_occ_0' / '000000_10.png', np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r'000000_10\.png: KITTI disparity must be a 16-bit gray PNG'):
        Kitti2015Dataset(tmp_path)[0]


# --- Middlebury 2014 --------------------------------------------------------------------------------

CALIB = """cam0=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]
cam1=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]
doffs=0
baseline=111.53
width={width}
height={height}
ndisp=290
isint=0
vmin=75
vmax=262
dyavg=0
dymax=0
"""


def make_middlebury_scene(scene: Path, seed: int, right: bool = True, gt_suffix: str = '') -> dict[str, np.ndarray]:
    scene.mkdir(parents=True)
    data = {'left': rgb(seed), 'right': rgb(seed + 1), 'disp0': disparity(seed + 2), 'disp1': disparity(seed + 3)}
    data['disp0'][2, 2] = np.inf  # Middlebury's "unknown"
    data['disp1'][3, 3] = np.inf
    write_png(scene / 'im0.png', data['left'])
    write_png(scene / 'im1.png', data['right'])
    write_pfm(scene / f'disp0{gt_suffix}.pfm', data['disp0'])
    if right:
        write_pfm(scene / f'disp1{gt_suffix}.pfm', data['disp1'])
    (scene / 'calib.txt').write_text(CALIB.format(width=W, height=H))
    return data


def test_middlebury_reads_scene_with_inf_as_invalid(tmp_path: Path) -> None:
    data = make_middlebury_scene(tmp_path / 'Adirondack-perfect', seed=30)
    dataset = Middlebury2014Dataset(tmp_path / 'Adirondack-perfect')
    sample = dataset[0]
    assert sample['name'] == 'im0.png'
    assert_image(sample['left'], data['left'])
    assert_image(sample['right'], data['right'])
    assert_disparity(sample, 'left', data['disp0'])
    assert_disparity(sample, 'right', data['disp1'])
    assert not sample['valid_left'][0, 2, 2] and not sample['valid_right'][0, 3, 3]


def test_middlebury_folder_of_scenes_and_middeval3_names(tmp_path: Path) -> None:
    make_middlebury_scene(tmp_path / 'Motorcycle', seed=31, right=False, gt_suffix='GT')
    make_middlebury_scene(tmp_path / 'Piano', seed=32, gt_suffix='GT')
    dataset = Middlebury2014Dataset(tmp_path)
    assert [item.name for item in dataset.items] == ['Motorcycle/im0.png', 'Piano/im0.png']
    assert not dataset.has_right_disparity  # one scene lacks disp1: all-or-none
    with pytest.raises(DatasetError, match=r'right_disparity=True but 1 item\(s\) lack it'):
        Middlebury2014Dataset(tmp_path, right_disparity=True)


def test_middlebury_calibration_is_parsed_into_the_dataclass(tmp_path: Path) -> None:
    make_middlebury_scene(tmp_path / 'scene', seed=33)
    calibration = read_middlebury_calibration(tmp_path / 'scene' / 'calib.txt')
    np.testing.assert_array_equal(calibration.cam0, [[1758.23, 0, 953.34], [0, 1758.23, 552.29], [0, 0, 1]])
    assert calibration.cam1.shape == (3, 3)
    assert (calibration.doffs, calibration.baseline) == (0.0, 111.53)
    assert (calibration.width, calibration.height, calibration.ndisp) == (W, H, 290)
    assert (calibration.vmin, calibration.vmax) == (75.0, 262.0)
    assert calibration.extra == {'isint': '0', 'dyavg': '0', 'dymax': '0'}
    assert Middlebury2014Dataset(tmp_path / 'scene').calibrations[0].baseline == 111.53


@pytest.mark.parametrize('text, message', [
    ('cam0=[1 0 0; 0 1 0; 0 0 1]\n', 'missing cam1, doffs, baseline, width, height, ndisp, vmin, vmax'),
    (CALIB.replace('doffs=0', 'doffs=abc'), "doffs='abc' is not a number"),
    (CALIB.replace('ndisp=290', 'ndisp=2.5'), "ndisp='2.5' is not an integer"),
    (CALIB.replace('[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]', '[1 2; 3 4]', 1), 'cam0 is not a 3x3 matrix'),
    (CALIB + 'garbage line\n', r'calib\.txt:13: expected key=value'),
])
def test_bad_calibration_files_are_named_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / 'calib.txt').write_text(text.format(width=W, height=H))
    with pytest.raises(DatasetError, match=message):
        read_middlebury_calibration(tmp_path / 'calib.txt')


def test_middlebury_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match='no scene folder with im0.png'):
        Middlebury2014Dataset(tmp_path)
    make_middlebury_scene(tmp_path / 'scene', seed=34)
    (tmp_path / 'scene' / 'calib.txt').write_text(CALIB.format(width=W + 1, height=H))
    with pytest.raises(DatasetError, match=rf'image is {H}x{W} but calib.txt says {H}x{W + 1}'):
        Middlebury2014Dataset(tmp_path)[0]
    (tmp_path / 'scene' / 'disp0.pfm').unlink()
    with pytest.raises(DatasetError, match=r'disp0\.pfm \(or disp0GT\.pfm\) is missing'):
        Middlebury2014Dataset(tmp_path)
    without_truth = Middlebury2014Dataset(tmp_path, require_disparity=False)
    (tmp_path / 'scene' / 'calib.txt').write_text(CALIB.format(width=W, height=H))
    assert not without_truth.has_disparity and set(Middlebury2014Dataset(tmp_path, require_disparity=False)[0]) == {
        'left', 'right', 'name'}
    (tmp_path / 'scene' / 'calib.txt').unlink()
    with pytest.raises(DatasetError, match=r'scene: calib\.txt is missing'):
        Middlebury2014Dataset(tmp_path)


# --- KeystoneDepth (OpenEXR ground truth) -----------------------------------------------------------

def _exr_zip(raw: bytes) -> bytes:
    """OpenEXR's ZIP filter (inverse of the reader's): interleave halves, byte deltas + 128, zlib."""
    data = np.frombuffer(raw, dtype=np.uint8)
    half = (data.size + 1) // 2
    reordered = np.concatenate([data[0::2], data[1::2]])
    assert reordered[:half].size == half
    deltas = reordered.astype(np.int64)
    deltas[1:] = (reordered[1:].astype(np.int64) - reordered[:-1].astype(np.int64) + 128) % 256
    return zlib.compress(deltas.astype(np.uint8).tobytes())


def write_exr(path: Path, channels: dict[str, np.ndarray], compression: int = 3, half: bool = False,
              origin: tuple[int, int] = (0, 0)) -> None:
    """A minimal single-part scanline OpenEXR writer (compression 0 NONE, 2 ZIPS, 3 ZIP)."""
    names = sorted(channels)
    height, width = channels[names[0]].shape
    dtype, pixel_type = (np.dtype('<f2'), 1) if half else (np.dtype('<f4'), 2)

    def attribute(name: str, kind: str, data: bytes) -> bytes:
        return name.encode() + b'\0' + kind.encode() + b'\0' + struct.pack('<i', len(data)) + data

    chlist = b''.join(n.encode() + b'\0' + struct.pack('<iB3xii', pixel_type, 0, 1, 1) for n in names) + b'\0'
    x0, y0 = origin
    window = struct.pack('<4i', x0, y0, x0 + width - 1, y0 + height - 1)
    header = (b'\x76\x2f\x31\x01' + struct.pack('<I', 2)
              + attribute('channels', 'chlist', chlist) + attribute('compression', 'compression', bytes([compression]))
              + attribute('dataWindow', 'box2i', window) + attribute('displayWindow', 'box2i', window)
              + attribute('lineOrder', 'lineOrder', b'\0')
              + attribute('pixelAspectRatio', 'float', struct.pack('<f', 1))
              + attribute('screenWindowCenter', 'v2f', struct.pack('<2f', 0, 0))
              + attribute('screenWindowWidth', 'float', struct.pack('<f', 1)) + b'\0')
    lines = {0: 1, 2: 1, 3: 16}[compression]
    chunks = []
    for row in range(0, height, lines):
        raw = b''.join(channels[n][y].astype(dtype).tobytes() for y in range(row, min(row + lines, height))
                       for n in names)
        data = raw
        if compression:
            packed = _exr_zip(raw)
            data = packed if len(packed) < len(raw) else raw
        chunks.append(struct.pack('<ii', y0 + row, len(data)) + data)
    offset = len(header) + 8 * len(chunks)
    table = b''
    for chunk in chunks:
        table += struct.pack('<Q', offset)
        offset += len(chunk)
    path.write_bytes(header + table + b''.join(chunks))


@pytest.mark.parametrize('compression', [0, 2, 3])
@pytest.mark.parametrize('half', [False, True])
def test_exr_reader_round_trips_compressions_and_pixel_types(tmp_path: Path, compression: int, half: bool) -> None:
    values = np.random.default_rng(40).uniform(-5, 300, size=(37, 11)).astype(np.float32)
    values[::4, ::3] = 0.0  # runs that the ZIP predictor compresses
    values[5, 5] = np.inf
    expected = values.astype(np.float16).astype(np.float32) if half else values
    write_exr(tmp_path / 'd.exr', {'Y': values}, compression=compression, half=half, origin=(3, 7))
    np.testing.assert_array_equal(read_exr_channel(tmp_path / 'd.exr'), expected)


def test_exr_reader_picks_y_among_several_channels(tmp_path: Path) -> None:
    values = disparity(41)
    write_exr(tmp_path / 'd.exr', {'A': np.ones((H, W), np.float32), 'Y': values, 'Z': -values})
    np.testing.assert_array_equal(read_exr_channel(tmp_path / 'd.exr'), values)


def test_exr_reader_errors(tmp_path: Path) -> None:
    (tmp_path / 'no.exr').write_bytes(b'not an exr file')
    with pytest.raises(DatasetError, match=r'no\.exr: not an OpenEXR file'):
        read_exr_channel(tmp_path / 'no.exr')
    write_exr(tmp_path / 'piz.exr', {'Y': disparity(42)}, compression=0)
    data = bytearray((tmp_path / 'piz.exr').read_bytes())
    marker = data.index(b'compression\0compression\0') + len(b'compression\0compression\0') + 4
    data[marker] = 4  # PIZ
    (tmp_path / 'piz.exr').write_bytes(bytes(data))
    with pytest.raises(DatasetError, match='PIZ compression is not supported'):
        read_exr_channel(tmp_path / 'piz.exr')
    write_exr(tmp_path / 'cut.exr', {'Y': disparity(43)})
    (tmp_path / 'cut.exr').write_bytes((tmp_path / 'cut.exr').read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r'cut\.exr: .*(truncated|corrupt)'):
        read_exr_channel(tmp_path / 'cut.exr')
    with pytest.raises(DatasetError, match=r'cannot read EXR .*absent\.exr'):
        read_exr_channel(tmp_path / 'absent.exr')


def position_map(height: int, width: int) -> np.ndarray:
    """Disparity whose value tells where it came from: row * 100 + column."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.asarray(rows * 100 + columns, dtype=np.float32)


def make_keystone(root: Path) -> Path:
    """One pair with the data set's size quirk: left 6x8, right 6x10, disp L 8x8, disp R 6x8."""
    images = root / 'scene_0001' / 'processed' / 'rectified'
    disparities = images / 'disp_info_LR'
    disparities.mkdir(parents=True)
    write_png(images / 'photoL.png', rgb(50, 6, 8))
    write_png(images / 'photoR.png', rgb(51, 6, 10))
    write_exr(disparities / 'photoL.exr', {'Y': position_map(8, 8)})
    write_exr(disparities / 'photoR.exr', {'Y': position_map(6, 8)})
    return images


def test_keystone_centre_crops_every_array_to_the_smallest_size(tmp_path: Path) -> None:
    make_keystone(tmp_path)
    dataset = KeystoneDataset(tmp_path)
    assert [item.name for item in dataset.items] == ['scene_0001/processed/rectified/photoL.png']
    sample = dataset[0]
    assert sample['left'].shape == sample['right'].shape == (3, 6, 8)
    assert_image(sample['left'], rgb(50, 6, 8))
    assert_image(sample['right'], rgb(51, 6, 10)[:, 1:9])  # 2 columns too many: one off each side
    assert_disparity(sample, 'left', position_map(8, 8)[1:7])  # 2 rows too many: one off each side
    assert_disparity(sample, 'right', position_map(6, 8))


def test_keystone_pairs_file_as_the_seed_writes_it(tmp_path: Path) -> None:
    make_keystone(tmp_path)
    base = 'scene_0001/processed/rectified'
    pairs = tmp_path / 'training_paths.txt'
    pairs.write_text(f'{base}/photoL.png,{base}/photoR.png,{base}/disp_info_LR/photoL.exr,'
                     f'{base}/disp_info_LR/photoR.exr\n')
    dataset = KeystoneDataset(tmp_path, pairs_file=pairs)
    assert len(dataset) == 1 and dataset.has_right_disparity
    assert dataset[0]['disp_left'].shape == (1, 6, 8)
    pairs.write_text('only,three,fields\n')
    with pytest.raises(DatasetError, match=r'training_paths\.txt:1: expected left,right,disp_left,disp_right'):
        KeystoneDataset(tmp_path, pairs_file=pairs)


def test_keystone_errors_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'no \*L\.png images found'):
        KeystoneDataset(tmp_path)
    images = make_keystone(tmp_path)
    (images / 'disp_info_LR' / 'photoL.exr').unlink()
    with pytest.raises(DatasetError, match=r'disp_info_LR/photoL\.exr is missing \(needed by .*photoL\.png\)'):
        KeystoneDataset(tmp_path)


# --- plain folder of pairs --------------------------------------------------------------------------

def test_pair_folder_reads_pfm_npy_and_16_bit_png_disparities(tmp_path: Path) -> None:
    for folder in ('left', 'right', 'disparity'):
        (tmp_path / folder).mkdir()
    truth = {name: disparity(60 + index) for index, name in enumerate(('a', 'b', 'c'))}
    truth['a'][0, 0] = np.inf
    truth['b'][1, 1] = np.nan
    truth['c'] = np.round(truth['c'] * 256.0) / 256.0
    truth['c'][2, 2] = np.nan
    for index, name in enumerate(truth):
        write_png(tmp_path / 'left' / f'{name}.png', rgb(70 + index))
        write_png(tmp_path / 'right' / f'{name}.png', rgb(80 + index))
    write_pfm(tmp_path / 'disparity' / 'a.pfm', truth['a'])
    np.save(tmp_path / 'disparity' / 'b.npy', truth['b'])
    write_png(tmp_path / 'disparity' / 'c.png', kitti_png(truth['c']))
    (tmp_path / 'left' / 'notes.txt').write_text('not an image')
    dataset = PairFolderDataset(tmp_path)
    assert [item.name for item in dataset.items] == ['left/a.png', 'left/b.png', 'left/c.png']
    for index, name in enumerate(truth):
        sample = dataset[index]
        assert_image(sample['left'], rgb(70 + index))
        assert_image(sample['right'], rgb(80 + index))
        assert_disparity(sample, 'left', truth[name])


def test_pair_folder_without_disparity_and_its_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r'pair folder .*left is missing or not a directory'):
        PairFolderDataset(tmp_path)
    (tmp_path / 'left').mkdir()
    (tmp_path / 'right').mkdir()
    with pytest.raises(DatasetError, match=r'no images in .*left'):
        PairFolderDataset(tmp_path)
    write_png(tmp_path / 'left' / 'x.png', rgb(90))
    with pytest.raises(DatasetError, match=r'right/x\.png is missing \(needed by .*left/x\.png\)'):
        PairFolderDataset(tmp_path)
    write_png(tmp_path / 'right' / 'x.png', rgb(91))
    sample = PairFolderDataset(tmp_path)[0]
    assert set(sample) == {'left', 'right', 'name'}
    (tmp_path / 'disparity').mkdir()
    with pytest.raises(DatasetError, match=r'no disparity for x\.png .*looked for x\.pfm, \.npy, \.png'):
        PairFolderDataset(tmp_path)


def test_pair_folder_size_mismatch_and_broken_image_are_named(tmp_path: Path) -> None:
    for folder in ('left', 'right'):
        (tmp_path / folder).mkdir()
    write_png(tmp_path / 'left' / 'x.png', rgb(92))
    write_png(tmp_path / 'right' / 'x.png', rgb(93, H, W + 2))
    with pytest.raises(DatasetError, match=rf'sizes differ \(left image {H}x{W}, right image {H}x{W + 2}\)'):
        PairFolderDataset(tmp_path)[0]
    (tmp_path / 'right' / 'x.png').write_bytes(b'broken')
    with pytest.raises(DatasetError, match=r'right/x\.png: not a recognised image format'):
        PairFolderDataset(tmp_path)[0]


def test_sixteen_bit_images_are_scaled_to_0_255_and_rgb_to_luma_for_one_channel(tmp_path: Path) -> None:
    for folder in ('left', 'right'):
        (tmp_path / folder).mkdir()
    write_png(tmp_path / 'left' / 'x.png', np.array([[0, 65535]], dtype=np.uint16))
    write_png(tmp_path / 'right' / 'x.png', np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8))
    sample = PairFolderDataset(tmp_path, channels=1)[0]
    np.testing.assert_allclose(sample['left'].numpy(), [[[0.0, 255.0]]])
    np.testing.assert_allclose(sample['right'].numpy(), [[[0.299 * 255, 0.114 * 255]]], rtol=1e-6)


# --- random_crop ------------------------------------------------------------------------------------

def position_sample(height: int = H, width: int = W) -> StereoSample:
    where = torch.from_numpy(position_map(height, width))[None]  # (1, H, W)
    return {'left': where.repeat(3, 1, 1), 'right': where.repeat(3, 1, 1) + 1, 'name': 'x',
            'disp_left': where + 2, 'valid_left': where > 5}


def test_random_crop_takes_the_same_window_from_every_entry() -> None:
    sample = position_sample()
    cropped = random_crop(sample, 3, 4, np.random.default_rng(0))
    corner = float(cropped['left'][0, 0, 0])
    top, left = int(corner // 100), int(corner % 100)
    expected = torch.from_numpy(position_map(H, W))[top:top + 3, left:left + 4]
    assert cropped['left'].shape == (3, 3, 4) and cropped['valid_left'].shape == (1, 3, 4)
    torch.testing.assert_close(cropped['right'][1], expected + 1)
    torch.testing.assert_close(cropped['disp_left'][0], expected + 2)
    torch.testing.assert_close(cropped['valid_left'][0], expected > 5)
    assert cropped['name'] == 'x'
    assert sample['left'].shape == (3, H, W)  # the input is untouched


def test_random_crop_is_reproducible_and_covers_every_position() -> None:
    sample = position_sample()
    first = random_crop(sample, 3, 4, np.random.default_rng(7))
    again = random_crop(sample, 3, 4, np.random.default_rng(7))
    torch.testing.assert_close(first['left'], again['left'])
    rng = np.random.default_rng(8)
    corners = {float(random_crop(sample, H - 1, W - 1, rng)['left'][0, 0, 0]) for _ in range(200)}
    assert corners == {0.0, 1.0, 100.0, 101.0}


def test_random_crop_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match=rf'crop {H + 1}x{W} is larger than the sample \({H}x{W}\)'):
        random_crop(position_sample(), H + 1, W, rng)
    with pytest.raises(DatasetError, match='crop size must be positive, got 0x4'):
        random_crop(position_sample(), 0, 4, rng)
    mixed = position_sample()
    mixed['disp_left'] = torch.zeros(1, H + 1, W)
    with pytest.raises(DatasetError, match='sample entries differ in size'):
        random_crop(mixed, 2, 2, rng)
