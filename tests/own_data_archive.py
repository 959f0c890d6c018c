"""Test helpers for the own-data path: a DICOM export made from the real files in ../shared/data and
a RIS report CSV written from real Open-I reports (read at test time, never copied into the source)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from llavarad.data.importers._archive_testing import ArchivePlan, make_archive

DICOMS = ("siim_pa_jpeg_baseline.dcm", "cr_monochrome1_10bit_nopreamble.dcm")


@dataclass
class OwnData:
    """A generated archive, its report CSV and what each study's report says."""

    plan: ArchivePlan
    reports: Path
    texts: dict[str, str]  # accession -> report text written to the CSV
    without_report: list[str]  # accessions left out of the CSV
    extra_reports: list[str]  # accessions in the CSV that no study has
    headerless: list[str]  # accessions whose report has no section header


def openi_reports(shared_data: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` Open-I development reports that have findings."""
    rows = []
    with (shared_data / "reports" / "openi_dev" / "openi_reports_dev.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["findings"].strip() and row["indication"].strip():
                rows.append(row)
            if len(rows) == n:
                break
    return rows


def make_own_data(shared_data: Path, root: Path, n_patients: int = 6, seed: int = 0,
                  n_reported: int | None = None) -> OwnData:
    """An archive of ``n_patients`` x 2 studies plus oddities, and a report CSV for all but the last study
    (or only for the first ``n_reported`` studies: an archive larger than the report dump).

    The third study's report has no header (all text, no FINDINGS:); two reports name accession
    numbers no study has.
    """
    plan = make_archive([shared_data / "images" / n for n in DICOMS], root / "export", n_patients, seed=seed)
    reported = plan.studies[:-1] if n_reported is None else plan.studies[:n_reported]
    sources = openi_reports(shared_data, len(reported) + 2)
    texts: dict[str, str] = {}
    headerless = [plan.studies[2].accession]
    for study, row in zip(reported, sources):
        if study.accession in headerless:
            texts[study.accession] = row["findings"]
        else:
            texts[study.accession] = (f"INDICATION: {row['indication']}\n\nFINDINGS: {row['findings']}\n\n"
                                      f"IMPRESSION: {row['impression']}")
    extra = ["NOSTUDY1", "NOSTUDY2"]
    path = root / "ris_reports.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "report", "reason"])
        for acc, text in texts.items():
            w.writerow([acc, text, "from the RIS"])
        for acc, row in zip(extra, sources[-2:]):
            w.writerow([acc, f"FINDINGS: {row['findings']}", ""])
    without = [st.accession for st in plan.studies if st.accession not in texts]
    return OwnData(plan, path, texts, without, extra, headerless)


def llavarad_command() -> list[str]:
    """The installed ``llavarad`` console script of this interpreter's environment."""
    import sys

    return [str(Path(sys.executable).with_name("llavarad"))]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_while_reading_headers(cmd: list[str], state: Path, n_files: int, tries: int = 5) -> int:
    """Run ``cmd`` (an import with ``--restart``) and SIGKILL it once its state file has rows but not
    all of them; return how many headers it had finished. Retries when the kill came too late."""
    import os
    import signal
    import subprocess
    import time

    for _ in range(tries):
        state.unlink(missing_ok=True)
        proc = subprocess.Popen([*cmd, "--restart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _lines(state) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if 1 < _lines(state) <= n_files:  # the meta line plus some, not all, headers
            return _lines(state) - 1
    raise AssertionError(f"could not kill the import while it was reading headers in {tries} tries")
