"""Writes tasks.json: a 50-task, 3-stage pipeline over the datastore.

    python examples/pipeline/make_tasks.py

prepare-i (10) cut a slice of data/seed.txt (checked by sha256);
simulate-j (30) each take one slice from prepare-(j % 10) and compute on it;
summarize-k (10) each combine three simulations. Every stage reads the
outputs of the one before by reference ({"from": task, "path": file}), so the
boss's datastore carries the data from stage to stage. Results land in
results/<task id>/, except the simulations', which go to simulations/<j>/
(a task's "results" folder), and the summaries still find them.
"""

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).parent
SEED = HERE / "datastore" / "data" / "seed.txt"


def tasks() -> list[dict]:
    seed_sha = hashlib.sha256(SEED.read_bytes()).hexdigest()
    out = []
    for i in range(10):
        out.append({
            "id": f"prepare-{i}",
            "command": f"awk 'NR % 10 == {i}' seed.txt > part.txt",
            "inputs": [{"path": "data/seed.txt", "sha256": seed_sha}],
            "outputs": ["part.txt"],
        })
    for j in range(30):
        src = f"prepare-{j % 10}"
        out.append({
            "id": f"simulate-{j}",
            "command": f"awk '{{s += $1 * {j + 1}}} END {{print s}}' part.txt > result.txt",
            "depends_on": [src],
            "inputs": [{"from": src, "path": "part.txt"}],
            "outputs": ["result.txt"],
            "results": f"simulations/{j}",
            "retries": 1,
        })
    for k in range(10):
        sims = [f"simulate-{3 * k + n}" for n in range(3)]
        out.append({
            "id": f"summarize-{k}",
            "command": "cat r0.txt r1.txt r2.txt | awk '{s += $1} END {print s}' > summary.txt",
            "depends_on": sims,
            "inputs": [{"from": s, "path": "result.txt", "name": f"r{n}.txt"}
                       for n, s in enumerate(sims)],
            "outputs": ["summary.txt"],
        })
    return out


if __name__ == "__main__":
    (HERE / "tasks.json").write_text(json.dumps({"tasks": tasks()}, indent=1) + "\n")
