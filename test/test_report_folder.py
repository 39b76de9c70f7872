"""ReportFolder: a report appears whole or not at all, and staging left by a killed run is cleaned up."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stereonet_ros.evaluation.report import ReportFolder


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_staging_of_a_killed_run_is_removed_and_a_live_run_s_is_kept(tmp_path: Path) -> None:
    abandoned = tmp_path / f'.partial-report-{_dead_pid()}-k1ll3d'
    older_version = tmp_path / '.partial-report-abc123'  # no pid: an older version's, abandoned
    live = tmp_path / f'.partial-report-{os.getppid()}-running'
    for folder in (abandoned, older_version, live):
        folder.mkdir()
        (folder / 'metrics.json').write_text('{}')
    with ReportFolder(tmp_path) as staging:
        (staging.path / 'metrics.json').write_text('{"ok": true}')
        assert staging.path.name.startswith(f'.partial-report-{os.getpid()}-')
        staging.publish()
    assert not abandoned.exists() and not older_version.exists()
    assert live.exists()
    assert (tmp_path / 'metrics.json').read_text() == '{"ok": true}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.partial')) == [live.name]


def test_leaving_without_publishing_removes_this_run_s_staging(tmp_path: Path) -> None:
    try:
        with ReportFolder(tmp_path) as staging:
            (staging.path / 'metrics.json').write_text('{}')
            raise RuntimeError('a failure mid-report')
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
