"""Per-view defocus files (taichi_etgs/io/defocus.py): IMOD ctfplotter .defocus (versions 2
and 3), CTFFIND4 and AreTomo3 _CTF.txt, written by hand from their documentation and
source (see the module docstring), malformed files, and matching to a stack's views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from taichi_etgs.errors import InputError
from taichi_etgs.io.defocus import match_views, read_defocus, write_imod_defocus

# ctfplotter, version 2: the first line ends with the version; defocus in nm, views from 1.
IMOD_V2 = """\
1 1 -60.00 -60.00 3012 2
2 2 -57.00 -57.00 3040
3 3 -54.00 -54.00 2998
4 4 -51.00 -51.00 3105
"""

# Version 3, flags 0: a header line, then the same five columns.
IMOD_V3 = """\
0  0 0. 0. 0  3
1  1  -60.00  -60.00  3012.4
2  2  -57.00  -57.00  3040.0
3  3  -54.00  -54.00  2998.1
4  4  -51.00  -51.00  3105.7
"""

# Version 3, flag 1: astigmatism (defocus 1, defocus 2, angle in degrees).
IMOD_V3_ASTIG = """\
1  0 0. 0. 0  3
1  1  -60.00  -60.00  3100.0  2900.0  35.5
2  2  -57.00  -57.00  3140.0  2940.0  36.0
3  3  -54.00  -54.00  3050.0  2950.0  -20.0
"""

# Flags 1 + 2 + 4 + 16: the angle in radians, a phase shift (degrees) and a cut-on.
IMOD_V3_ALL = """\
23 0 0. 0. 0 3
1 1 -3.00 -3.00 3100.0 2900.0 0.5 90.0 0.0153
2 2 0.00 0.00 3200.0 3000.0 0.5 91.0 0.0153
"""

CTFFIND4 = "\n".join([
    "# Output from CTFFind version 4.1.14, run on 2024-03-02 10:11:12",
    "# Input file: /data/TS_01.st ; Number of micrographs: 3",
    "# Pixel size: 1.350 Angstroms ; acceleration voltage: 300.0 keV ; spherical "
    "aberration: 2.70 mm ; amplitude contrast: 0.07",
    "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; "
    "min. def.: 5000.0 um; max. def. 50000.0 um",
    "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
    "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross "
    "correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit successfully",
    "1.000000 31523.951172 30877.367188 -51.540001 0.000000 0.081283 7.412345",
    "2.000000 30888.214844 30120.906250 47.419998 0.000000 0.069812 8.125478",
    "3.000000 29987.031250 29541.123047 12.000000 0.000000 0.074156 7.998211",
]) + "\n"

# AreTomo3 (CSaveCtfResults): "%4d   %8.2f  %8.2f  %8.2f  %9.4f  %8.4f  %8.4f  %3d".
ARETOMO3 = "\n".join([
    "# Columns: #1 micrograph number; #2 - defocus 1 [A]; #3 - defocus 2; #4 - azimuth of "
    "astigmatism; #5 - additional phase shift [radian]; #6 - cross correlation; #7 - "
    "spacing (in Angstroms) up to which CTF rings were fit successfully; #8 - dfHand",
    "   1   31523.95  30877.37    -51.54     0.0000    0.0813    7.4123    1",
    "   2   30888.21  30120.91     47.42     0.0000    0.0698    8.1255    1",
    "   3   29987.03  29541.12     12.00     0.0000    0.0742    7.9982    1",
]) + "\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_imod_version_2(tmp_path):
    d = read_defocus(_write(tmp_path, "ts.defocus", IMOD_V2))
    assert d.format == "imod" and not d.astigmatic and d.defocus1_um is None
    np.testing.assert_allclose(d.defocus_um, [3.012, 3.040, 2.998, 3.105])  # nm -> um
    assert d.lines.tolist() == [1, 2, 3, 4]


def test_imod_version_3_header_line(tmp_path):
    d = read_defocus(_write(tmp_path, "ts.defocus", IMOD_V3))
    np.testing.assert_allclose(d.defocus_um, [3.0124, 3.040, 2.9981, 3.1057])
    assert d.lines.tolist() == [2, 3, 4, 5]


def test_imod_version_3_astigmatism(tmp_path):
    d = read_defocus(_write(tmp_path, "ts.defocus", IMOD_V3_ASTIG))
    assert d.astigmatic
    np.testing.assert_allclose(d.defocus1_um, [3.1, 3.14, 3.05])
    np.testing.assert_allclose(d.defocus2_um, [2.9, 2.94, 2.95])
    np.testing.assert_allclose(d.astigmatism_deg, [35.5, 36.0, -20.0])
    np.testing.assert_allclose(d.defocus_um, [3.0, 3.04, 3.0])


def test_imod_flags_radians_phase_and_cut_on(tmp_path):
    d = read_defocus(_write(tmp_path, "ts.defocus", IMOD_V3_ALL))
    np.testing.assert_allclose(d.defocus1_um, [3.1, 3.2])
    np.testing.assert_allclose(d.astigmatism_deg, np.degrees(0.5) * np.ones(2))  # flag 2


def test_imod_view_ranges_interpolate_between_centres(tmp_path):
    # ctfplotter fitted views 1-3 together (centre view 2) and 4-6 (centre view 5); view 7
    # was not fitted. Views between centres are interpolated, beyond them held.
    text = "0 0 0. 0. 0 3\n1 3 -60.0 -54.0 3000\n4 6 -51.0 -45.0 3300\n"
    d = read_defocus(_write(tmp_path, "ranges.defocus", text))
    np.testing.assert_allclose(d.defocus_um, [3.0, 3.0, 3.1, 3.2, 3.3, 3.3])
    assert d.lines.tolist() == [0, 2, 0, 0, 3, 0]
    matched = match_views(d, 7, np.arange(7))
    np.testing.assert_allclose(matched.defocus_um[-1], 3.3)  # view 7: the last value


def test_ctffind4(tmp_path):
    d = read_defocus(_write(tmp_path, "diagnostic_output.txt", CTFFIND4))
    assert d.format == "ctffind4" and d.astigmatic
    np.testing.assert_allclose(d.defocus1_um, [3.1523951172, 3.0888214844, 2.998703125])
    np.testing.assert_allclose(d.astigmatism_deg, [-51.54, 47.42, 12.0], atol=1e-5)
    np.testing.assert_allclose(d.defocus_um, 0.5 * (d.defocus1_um + d.defocus2_um))
    assert d.lines.tolist() == [6, 7, 8]


def test_aretomo3(tmp_path):
    d = read_defocus(_write(tmp_path, "TS_01_CTF.txt", ARETOMO3))
    assert d.format == "aretomo3"
    np.testing.assert_allclose(d.defocus1_um, [3.152395, 3.088821, 2.998703])
    np.testing.assert_allclose(d.defocus2_um, [3.087737, 3.012091, 2.954112])
    # Numbered from 0 is accepted too (AreTomo3's loader takes them relative to the first).
    zero = ARETOMO3.replace("\n   1 ", "\n   0 ").replace("\n   2 ", "\n   1 ").replace(
        "\n   3 ", "\n   2 ")
    np.testing.assert_allclose(read_defocus(_write(tmp_path, "z_CTF.txt", zero)).defocus_um,
                               d.defocus_um)


def test_format_is_told_by_content_not_name(tmp_path):
    assert read_defocus(_write(tmp_path, "a.defocus", ARETOMO3)).format == "aretomo3"
    assert read_defocus(_write(tmp_path, "b.txt", CTFFIND4)).format == "ctffind4"
    assert read_defocus(_write(tmp_path, "c.txt", IMOD_V3)).format == "imod"


def test_match_views_follows_the_kept_views(tmp_path):
    d = read_defocus(_write(tmp_path, "ts_CTF.txt", ARETOMO3))
    kept = np.array([0, 2])  # view 1 excluded (--exclude-views 1)
    np.testing.assert_allclose(match_views(d, 3, kept).defocus_um, d.defocus_um[[0, 2]])
    # A file with one row per kept view is taken in order.
    np.testing.assert_allclose(match_views(d.select([0, 2]), 3, kept).defocus_um,
                               d.defocus_um[[0, 2]])
    with pytest.raises(InputError, match=r"ts_CTF.txt: gives 3 rows but the stack has 5 "
                                         r"sections"):
        match_views(d, 5, np.arange(5))
    imod = read_defocus(_write(tmp_path, "long.defocus", IMOD_V3))
    with pytest.raises(InputError, match=r"up to view 4\) but the stack has 3 sections"):
        match_views(imod, 3, np.arange(3))


@pytest.mark.parametrize("name, text, message", [
    ("a.defocus", "0 0 0. 0. 0 3\n1 1 -60 -60 3000\n2 2 -57 -57\n",
     r"a.defocus, line 3: has 4 values; expected 5: START END ANGLE1 ANGLE2 DEFOCUS"),
    ("b.defocus", "1 0 0. 0. 0 3\n1 1 -60 -60 3000\n",
     r"b.defocus, line 2: has 5 values; expected 7: START END ANGLE1 ANGLE2 DEFOCUS1 "
     r"DEFOCUS2 ASTIG_ANGLE"),
    ("c.defocus", "1 1 -60 -60 3000\n2 2 -57 -57 3.1e3x\n",
     r"c.defocus, line 2: '3.1e3x' is not a number; expected START END"),
    ("d.defocus", "0 1 -60 -60 3000\n", r"d.defocus, line 1: views 0 to 1: expected view "
                                        r"numbers from 1"),
    ("e.defocus", "2 2 -60 -60 3000\n2 2 -57 -57 3100\n",
     r"e.defocus, line 2: gives views centred on 2 twice \(also line 1\)"),
    ("f.defocus", "1 1 -60 -60 3.0\n", None),  # 3 nm: plausible units error? no: allowed
    ("g.defocus", "1 1 -60 -60 300000\n", r"g.defocus, line 1: defocus 300 um is beyond "
                                          r"100 um; check the file's units"),
    ("h.defocus", "64 0 0. 0. 0 3\n1 1 0 0 3000\n", r"h.defocus, line 1: flags 64 hold bits"),
    ("i.defocus", "\n\n", r"i.defocus: holds no defocus lines"),
    ("j.defocus", "0 0 0. 0. 0 3\n", r"j.defocus: has a header but no defocus lines"),
    ("k_CTF.txt", ARETOMO3.replace("   2   30888.21", "   5   30888.21"),
     r"k_CTF.txt, line 3: image number 5: expected 2 \(one row per image of the stack"),
    ("l.txt", CTFFIND4.replace("2.000000 30888.214844 30120.906250 47.419998 0.000000 "
                               "0.069812 8.125478", "2.000000 30888.214844 30120.906250"),
     r"l.txt, line 7: has 3 values; expected 7: NUMBER DEFOCUS1\(A\) DEFOCUS2\(A\)"),
    ("m.txt", CTFFIND4.replace("29987.031250", "nan"),
     r"m.txt, line 8: 'nan' is not a number"),
    ("n.txt", "# Columns: #1 - micrograph number; #2 - defocus 1\n",
     r"n.txt: holds no rows; expected NUMBER DEFOCUS1"),
])
def test_malformed_files_name_the_file_line_and_expectation(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    if message is None:
        assert read_defocus(path).defocus_um[0] == pytest.approx(0.003)
        return
    with pytest.raises(InputError, match=message):
        read_defocus(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(InputError, match="nothere.defocus: file not found"):
        read_defocus(tmp_path / "nothere.defocus")
    binary = tmp_path / "stack.defocus"
    binary.write_bytes(b"MRC\x00\x01\x02" * 100)
    with pytest.raises(InputError, match="is a binary file, not a defocus file"):
        read_defocus(binary)


def test_write_imod_defocus_round_trip(tmp_path):
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
    defocus = np.array([3.1, 3.05, 3.0, 2.95, 2.9])
    path = tmp_path / "w.defocus"
    write_imod_defocus(path, tilts, defocus)
    back = read_defocus(path)
    assert back.format == "imod" and back.n_views == 5
    np.testing.assert_allclose(back.defocus_um, defocus, atol=5e-6)  # 0.01 nm written
    astig = tmp_path / "a.defocus"
    write_imod_defocus(astig, tilts, defocus, defocus - 0.2, np.full(5, 30.0))
    back = read_defocus(astig)
    np.testing.assert_allclose(back.defocus2_um, defocus - 0.2, atol=5e-6)
    np.testing.assert_allclose(back.astigmatism_deg, 30.0)


def test_simulator_writes_a_defocus_file_our_reader_reads(taichi_cpu, tmp_path):
    from taichi_etgs.simulation.simulate import (
        SimulationConfig,
        simulate_tilt_series,
        write_simulation,
    )

    config = SimulationConfig(shape_zyx=(16, 32, 32), tilt_min_deg=-30, tilt_max_deg=30,
                              tilt_step_deg=10, noise="physical", defocus_um=2.5, seed=3,
                              n_particles=2, n_vesicles=0, n_filaments=0)
    result = simulate_tilt_series(config)
    paths = write_simulation(result, tmp_path / "sim")
    d = read_defocus(paths["tilts.defocus"])
    assert d.n_views == len(result.tilts_deg) == 7
    np.testing.assert_allclose(d.defocus_um, 2.5)
    gaussian = simulate_tilt_series(dataclasses.replace(config, noise="gaussian"))
    assert "tilts.defocus" not in write_simulation(gaussian, tmp_path / "g")
