from didr.eval.report import Provenance, markdown_table, render, write_report


def test_a_report_opens_with_command_machine_and_date(tmp_path):
    prov = Provenance.here("didr toy --out runs/toy", "one process")
    path = write_report(tmp_path / "r" / "report.md", "Title", prov, ["Some text.", markdown_table(["a", "b"], [[1, "x"], [2, "y"]])])
    lines = path.read_text().splitlines()
    assert lines[0] == "# Title"
    assert lines[2] == "Command: `didr toy --out runs/toy`  "
    assert lines[3].startswith("Machine: ") and lines[3].endswith("; one process  ") and lines[4] == f"Date: {prov.date}"
    assert "| a | b |" in lines and "| 2 | y |" in lines and not list(path.parent.glob(".*.tmp"))
    assert Provenance(**prov.to_dict()) == prov


def test_a_report_without_provenance_is_its_sections():
    assert render("T", None, ["one", "", "two"]) == "# T\n\none\n\ntwo\n"
