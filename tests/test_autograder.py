"""The nbgrader pipeline end to end, on a temporary copy of the course.

The fixture copies ``autograder/`` and the assignment's source from ``solutions/`` into a
temporary folder, generates the student release with the course's own wrapper (course.py),
builds five submissions from the release and grades them with the course's configuration:

    solved       the solution code in every exercise                     -> full marks
    blank        the release as handed out                               -> 0, and no crash
    delegating   the three losses only call sslkit's reference           -> 0 on those three
    looping      ``while True: pass`` in nt_xent_loop                    -> that exercise lost,
                                                                            grading finishes
    tampered     a wrong simclr_step whose test cell says ``pass``,      -> graded by the original
                 build_augmentation's test cell deleted,                 -> put back and scored
                 similarity_matrix's test cell worth 100 points          -> worth its 1 point

Cells that call nt_xent_loop get a CELL_TIMEOUT of 20 s instead of the course's limit, so the
infinite loop costs 2 x 20 s; the other cells keep the course's limit, which the slow cells of
a loaded machine need. Exercises and points are read from the source notebook's nbgrader metadata,
scores from the gradebook and the exported CSV.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "04_simclr"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
EXERCISES = ["build_augmentation", "similarity_matrix", "nt_xent_loop", "nt_xent", "simclr_step"]
CELL_TIMEOUT = 20  # seconds for a cell that calls nt_xent_loop, in these tests only
COMMAND_TIMEOUT = 900  # a hung nbgrader command fails the test instead of hanging it

# Replacement definitions, each appended to the exercise's solution cell, so it overrides the
# solution whatever else the cell holds.
DELEGATING = {
    "similarity_matrix": """
def similarity_matrix(z1, z2):
    import sslkit.losses
    z = torch.cat([z1, z2])
    return sslkit.losses.cosine_similarity_matrix(z, z)
""",
    "nt_xent_loop": """
def nt_xent_loop(z1, z2, temperature):
    import sslkit.losses
    return sslkit.losses.nt_xent_loop(z1, z2, temperature)
""",
    "nt_xent": """
def nt_xent(z1, z2, temperature):
    import sslkit.losses
    return sslkit.losses.nt_xent(z1, z2, temperature)
""",
}
LOOPING = {
    "nt_xent_loop": """
def nt_xent_loop(z1, z2, temperature):
    while True:
        pass
""",
}
TAMPERED = {
    "simclr_step": """
def simclr_step(model, optimizer, v1, v2, temperature):
    return nt_xent(model(v1), model(v2), temperature).item()  # no update: wrong
""",
}
# In these tests, cells that call nt_xent_loop stop after CELL_TIMEOUT; others keep the limit.
TEST_TIMEOUTS = f"""
c.Execute.timeout_func = (
    lambda cell, default=c.Execute.timeout:
    {CELL_TIMEOUT} if "nt_xent_loop" in cell.source else default
)
"""

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- notebook helpers
def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def defined_exercise(cell) -> str | None:
    """The exercise a solution cell defines (``def name(``), or None."""
    if cell.cell_type != "code" or not nbgrader_meta(cell).get("solution"):
        return None
    for name in EXERCISES:
        if re.search(rf"^def {name}\(", cell.source, re.MULTILINE):
            return name
    return None


def exercise_tests(nb) -> dict[str, dict[str, float]]:
    """exercise -> {grade_id: points} of the test cells that follow its solution cell."""
    tests: dict[str, dict[str, float]] = {name: {} for name in EXERCISES}
    current = None
    for cell in nb.cells:
        current = defined_exercise(cell) or current
        if is_test_cell(cell):
            assert current, f"test cell {grade_id(cell)} comes before every exercise"
            tests[current][grade_id(cell)] = float(nbgrader_meta(cell)["points"])
    return tests


def solved(release, source):
    """The release with every solution code cell replaced by the source's."""
    nb = nbformat.from_dict(release)
    sources = {grade_id(cell): cell.source for cell in source.cells}
    for cell in nb.cells:
        if nbgrader_meta(cell).get("solution") and cell.cell_type == "code":
            cell.source = sources[grade_id(cell)]
    return nb


def override(nb, definitions: dict[str, str]):
    """Append a replacement definition to the cell that defines each named exercise."""
    nb = nbformat.from_dict(nb)
    todo = dict(definitions)
    for cell in nb.cells:
        name = defined_exercise(cell)
        if name in todo:
            cell.source = cell.source.rstrip() + "\n\n" + todo.pop(name)
    assert not todo, f"no solution cell defines {sorted(todo)}"
    return nb


def tampered(solution, tests):
    """TAMPERED's wrong simclr_step with its tests emptied, build_augmentation's tests deleted,
    similarity_matrix's worth 100 points."""
    nb = override(solution, TAMPERED)
    nb.cells = [c for c in nb.cells if grade_id(c) not in tests["build_augmentation"]]
    for cell in nb.cells:
        if grade_id(cell) in tests["simclr_step"]:
            cell.source = "# the test passes\npass"
        if grade_id(cell) in tests["similarity_matrix"]:
            cell.metadata["nbgrader"]["points"] = 100
    return nb


# ----------------------------------------------------------------------------- the course
def run_course(course: Path, *args: str) -> float:
    """Run ``python autograder/course.py ARGS`` in the course; return the wall time in seconds."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(course / "autograder" / "course.py"), *args],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    # nbgrader exits non-zero when it could not process a submission
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"course.py {' '.join(args)} failed:\n{output}"
    return time.monotonic() - start


def make_course(root: Path) -> Path:
    """A copy of the course root and of the assignment's source folder under ``root``."""
    made_by_nbgrader = ("gradebook.db", "submitted", "autograded", "feedback", "*.csv")
    shutil.copytree(REPO / "autograder", root / "autograder",
                    ignore=shutil.ignore_patterns(*made_by_nbgrader, "__pycache__"))  # fmt: skip
    shutil.copytree(SOURCE.parent, root / "solutions" / ASSIGNMENT,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))  # fmt: skip
    with open(root / "autograder" / "nbgrader_config.py", "a") as config:
        config.write(TEST_TIMEOUTS)
    return root


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Generate, submit five notebooks, autograde, feedback, export; return what it made."""
    course = make_course(tmp_path_factory.mktemp("course"))
    ag = course / "autograder"
    run_course(course, "release")

    source = nbformat.read(SOURCE, as_version=4)
    release = nbformat.read(course / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    tests = exercise_tests(source)
    solution = solved(release, source)
    submissions = {
        "solved": solution,
        "blank": release,
        "delegating": override(solution, DELEGATING),
        "looping": override(solution, LOOPING),
        "tampered": tampered(solution, tests),
    }
    (ag / "students.csv").write_text(
        "id,first_name,last_name,email\n"
        + "".join(f"{s},{s.title()},Student,{s}@example.org\n" for s in submissions)
    )
    run_course(course, "nbgrader", "db", "student", "import", "students.csv")
    for student, nb in submissions.items():
        folder = ag / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{ASSIGNMENT}.ipynb")

    seconds = {
        student: run_course(course, "nbgrader", "autograde", ASSIGNMENT, f"--student={student}")
        for student in ("solved", "looping")
    }
    run_course(course, "grade", ASSIGNMENT)  # the other three, then feedback and grades.csv

    scores = {}
    with Gradebook(f"sqlite:///{ag / 'gradebook.db'}", course_id="sslkit") as gb:
        for student in submissions:
            notebook = gb.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student)
            scores[student] = {g.name: float(g.score) for g in notebook.grades}
    with open(ag / "grades.csv", newline="") as f:
        exported = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    return {
        "course": course, "source": source, "tests": tests, "scores": scores,
        "exported": exported, "seconds": seconds,
    }  # fmt: skip


def exercise_scores(graded, student: str) -> dict[str, float]:
    scores = graded["scores"][student]
    return {name: sum(scores[g] for g in ids) for name, ids in graded["tests"].items()}


def full_marks(graded) -> dict[str, float]:
    return {name: sum(ids.values()) for name, ids in graded["tests"].items()}


def autograded_cells(graded, student: str) -> dict:
    path = graded["course"] / "autograder" / "autograded" / student / ASSIGNMENT
    nb = nbformat.read(path / f"{ASSIGNMENT}.ipynb", as_version=4)
    return {grade_id(c): c for c in nb.cells if grade_id(c)}


# ----------------------------------------------------------------------------- tests
def test_every_exercise_is_graded(graded):
    for name, points in full_marks(graded).items():
        assert points > 0, f"exercise {name} has no graded test cell with points"


def test_solution_scores_full_marks(graded):
    assert exercise_scores(graded, "solved") == full_marks(graded)
    assert graded["exported"]["solved"] == sum(full_marks(graded).values())


def test_untouched_release_scores_zero(graded):
    assert exercise_scores(graded, "blank") == dict.fromkeys(EXERCISES, 0.0)
    assert graded["exported"]["blank"] == 0
    feedback = graded["course"] / "autograder" / "feedback" / "blank" / ASSIGNMENT
    assert (feedback / f"{ASSIGNMENT}.html").is_file()


def test_calling_the_reference_scores_zero(graded):
    scores = exercise_scores(graded, "delegating")
    for name in DELEGATING:
        assert scores[name] == 0, f"{name} only calls sslkit's reference yet scores {scores[name]}"
    assert scores["build_augmentation"] == full_marks(graded)["build_augmentation"]


def test_infinite_loop_loses_that_exercise_only(graded):
    expected = full_marks(graded) | {"nt_xent_loop": 0.0}
    assert exercise_scores(graded, "looping") == expected


def test_edited_test_cells_are_graded_with_the_originals(graded):
    # simclr_step is wrong and its test cell says `pass`: the original test runs and fails it;
    # build_augmentation's deleted test is put back and scores; similarity_matrix's test, set
    # to 100 points, counts the points the source gives.
    expected = full_marks(graded) | {"simclr_step": 0.0}
    assert exercise_scores(graded, "tampered") == expected
    assert graded["exported"]["tampered"] == sum(expected.values())


def test_infinite_loop_is_cut_after_the_timeout(graded):
    cells = autograded_cells(graded, "looping")
    for test in graded["tests"]["nt_xent_loop"]:
        enames = [o.get("ename") for o in cells[test].outputs if o.output_type == "error"]
        assert "CellTimeoutError" in enames, f"{test} was not stopped by the timeout: {enames}"
    # Each cell that calls the looping function waits CELL_TIMEOUT once; the rest of grading
    # takes about as long as grading the solution (the margin absorbs a busy machine).
    hanging = sum("nt_xent_loop" in c.source and defined_exercise(c) is None
                  for c in graded["source"].cells if c.cell_type == "code")  # fmt: skip
    seconds = graded["seconds"]
    waited = hanging * CELL_TIMEOUT
    assert waited < seconds["looping"] < seconds["solved"] + waited + 60, (
        f"grading took {seconds['looping']:.0f} s with the loop, {seconds['solved']:.0f} s "
        f"without ({hanging} cells call nt_xent_loop, {CELL_TIMEOUT} s each)"
    )


# ----------------------------------------------------------------------------- every assignment
IGNORED = (".ipynb_checkpoints", "__pycache__")
OTHERS = sorted(p.parent.name for p in REPO.glob("solutions/*/*.ipynb")
                if p.parent.name != ASSIGNMENT)  # fmt: skip


@pytest.fixture(scope="module")
def graded_solutions(tmp_path_factory):
    """Every other assignment released, its solution submitted and autograded; returns
    {assignment: {grade_id: (auto_score, max_score, cell_type)}}."""
    course = tmp_path_factory.mktemp("all")
    shutil.copytree(REPO / "autograder", course / "autograder",
                    ignore=shutil.ignore_patterns("gradebook.db", "submitted", "autograded",
                                                  "feedback", "*.csv", "__pycache__"))  # fmt: skip
    for name in OTHERS:
        shutil.copytree(REPO / "solutions" / name, course / "solutions" / name,
                        ignore=shutil.ignore_patterns(*IGNORED))
    run_course(course, "release")
    for name in OTHERS:
        source = nbformat.read(course / "solutions" / name / f"{name}.ipynb", as_version=4)
        release = nbformat.read(course / "notebooks" / name / f"{name}.ipynb", as_version=4)
        folder = course / "autograder" / "submitted" / "solver" / name
        folder.mkdir(parents=True)
        nbformat.write(solved(release, source), folder / f"{name}.ipynb")
        run_course(course, "nbgrader", "autograde", name)
    grades = {}
    with Gradebook(f"sqlite:///{course / 'autograder' / 'gradebook.db'}",
                   course_id="sslkit") as gb:  # fmt: skip
        for name in OTHERS:
            notebook = gb.find_submission_notebook(name, name, "solver")
            grades[name] = {g.name: (g.auto_score, float(g.max_score), g.cell.cell_type)
                            for g in notebook.grades}  # fmt: skip
    return grades


@pytest.mark.parametrize("name", OTHERS)
def test_every_solution_scores_full_marks_under_nbgrader(graded_solutions, name):
    # nbgrader fails a test cell that writes to stderr, which nbval does not check: this runs
    # each solution notebook as the autograder does. Written answers (markdown) are graded by
    # hand and have no automatic score.
    grades = graded_solutions[name]
    code = {gid: (auto, top) for gid, (auto, top, kind) in grades.items() if kind == "code"}
    assert code, f"{name} has no automatically graded test cell"
    lost = {gid: f"{auto}/{top}" for gid, (auto, top) in code.items() if auto != top}
    assert not lost, f"{name}: the solution loses points under nbgrader: {lost}"
