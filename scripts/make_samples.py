# ruff: noqa: E501  (a table of sample texts: one example per line reads best)
"""Write the sample datasets shipped in pipeline/data/samples/.

The samples are our own text: a small "shell helper" assistant, answering questions about the
terminal. Each file holds a few deliberately broken rows, so that a new user sees at once what
validation reports look like. Run: `uv run python scripts/make_samples.py`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "pipeline" / "data" / "samples"

SYSTEM = "You are a concise shell helper. Answer with the command first, then one line of why."

QA = [
    (
        "How do I list files sorted by size?",
        "`ls -lS`\n-S sorts by size, largest first; add -r to reverse.",
    ),
    (
        "How can I see which process uses port 8080?",
        "`ss -ltnp 'sport = :8080'`\nss lists sockets; -p shows the owning process.",
    ),
    (
        "How do I count lines in every .py file?",
        "`wc -l $(git ls-files '*.py')`\nwc -l counts lines; git ls-files skips ignored files.",
    ),
    (
        "How do I find files changed in the last hour?",
        "`find . -mmin -60 -type f`\n-mmin -60 means modified less than 60 minutes ago.",
    ),
    (
        "How do I follow a log file as it grows?",
        "`tail -F app.log`\n-F keeps following even if the file is rotated.",
    ),
    (
        "How do I see disk usage of each folder here?",
        "`du -sh -- */ | sort -h`\nsort -h orders human-readable sizes correctly.",
    ),
    (
        "How do I rename all .jpeg files to .jpg?",
        '`for f in *.jpeg; do mv -- "$f" "${f%.jpeg}.jpg"; done`\n${f%.jpeg} strips the old suffix.',
    ),
    (
        "How do I keep a command running after I log out?",
        "`tmux new -s work`\nRun it inside tmux; detach with Ctrl-b d and reattach with `tmux attach -t work`.",
    ),
    (
        "How do I show the GPU memory in use?",
        "`nvidia-smi --query-gpu=memory.used,memory.total --format=csv`\nIt prints used and total memory per card.",
    ),
    (
        "How do I search for a word in all files recursively?",
        "`grep -rn 'word' .`\n-r recurses, -n prints line numbers.",
    ),
    (
        "How do I make a script executable?",
        "`chmod +x script.sh`\n+x adds the execute permission for everyone.",
    ),
    (
        "How do I compare two folders?",
        "`diff -rq dir_a dir_b`\n-r recurses, -q only names the files that differ.",
    ),
    (
        "How do I see the last 20 commands I ran?",
        "`history 20`\nhistory prints the shell's command history.",
    ),
    (
        "How do I extract a .tar.gz archive?",
        "`tar -xzf archive.tar.gz`\n-x extracts, -z uses gzip, -f names the file.",
    ),
    ("How do I check free memory?", "`free -h`\n-h prints sizes in human units."),
    (
        "How do I download a file from the command line?",
        "`curl -LO https://example.com/file.zip`\n-L follows redirects, -O keeps the remote name.",
    ),
    (
        "How do I watch a command's output every two seconds?",
        "`watch -n 2 nvidia-smi`\nwatch reruns the command and redraws the screen.",
    ),
    (
        "How do I kill a process by name?",
        "`pkill -f train.py`\n-f matches against the full command line.",
    ),
    (
        "How do I copy a folder to a remote machine?",
        "`rsync -avP data/ user@host:data/`\n-a keeps permissions, -P shows progress and resumes.",
    ),
    ("How do I print the current directory?", "`pwd`\nIt prints the working directory."),
]

FOLLOW_UPS = [
    (
        "How do I list files sorted by size?",
        "`ls -lS`\n-S sorts by size, largest first.",
        "And only the five biggest?",
        "`ls -lS | head -n 6`\nhead keeps the header line plus the first five files.",
    ),
    (
        "How do I find large files?",
        "`find . -type f -size +100M`\n-size +100M matches files over 100 MiB.",
        "Can I see their sizes too?",
        "`find . -type f -size +100M -exec du -h {} +`\ndu -h prints each size in human units.",
    ),
]


def write_jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def sharegpt_rows() -> list[dict]:
    rows: list[dict] = []
    for i, (q, a) in enumerate(QA[:12]):
        row: dict = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if i % 3 == 0:
            row["system"] = SYSTEM
        rows.append(row)
    for q1, a1, q2, a2 in FOLLOW_UPS:
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": q1},
                    {"from": "gpt", "value": a1},
                    {"from": "human", "value": q2},
                    {"from": "gpt", "value": a2},
                ]
            }
        )
    tools = [
        {
            "name": "disk_usage",
            "description": "Report used and free space of a mounted filesystem.",
            "parameters": {
                "type": "object",
                "properties": {"mount": {"type": "string", "description": "Mount point"}},
                "required": ["mount"],
            },
        }
    ]
    rows.append(
        {
            "conversations": [
                {"from": "human", "value": "How full is my root disk?"},
                {
                    "from": "function_call",
                    "value": dumps({"name": "disk_usage", "arguments": {"mount": "/"}}),
                },
                {"from": "observation", "value": dumps({"used_gb": 182, "free_gb": 70})},
                {
                    "from": "gpt",
                    "value": "Your root disk has 182 GB used and 70 GB free (72% full).",
                },
            ],
            "tools": dumps(tools),
        }
    )
    return rows


def write_sharegpt() -> None:
    rows = sharegpt_rows()
    lines = [dumps(r) for r in rows]
    # Deliberately broken rows, each a different problem validation must name.
    lines.insert(
        3,
        '{"conversations": [{"from": "human", "value": "How do I undo git add?"}, {"from": "gpt", "value": "`git restore --staged file`"}',
    )  # malformed JSON: missing closing brace
    lines.insert(
        7,
        dumps(
            {
                "conversations": [
                    {"from": "human", "value": "How do I see hidden files?"},
                    {"from": "bot", "value": "`ls -a`"},
                ]
            }
        ),
    )  # unknown role
    lines.insert(
        11,
        dumps(
            {
                "conversations": [
                    {"from": "human", "value": "How do I clear the screen?"},
                    {"from": "gpt", "value": "`clear`"},
                    {"from": "human", "value": "Thanks!"},
                ]
            }
        ),
    )  # ends with a user turn
    lines.insert(
        15,
        dumps(
            {
                "conversations": [
                    {"from": "human", "value": "   "},
                    {"from": "gpt", "value": "`echo hi`"},
                ]
            }
        ),
    )  # empty question
    write_jsonl(OUT / "sample_sharegpt.jsonl", lines)


def write_alpaca() -> None:
    rows: list[dict] = []
    for i, (q, a) in enumerate(QA):
        row = {"instruction": q, "input": "", "output": a}
        if i % 4 == 1:
            row["system"] = SYSTEM
        rows.append(row)
    rows[5]["input"] = "I am on Ubuntu 24.04."
    rows.insert(
        4, {"instruction": "How do I see my IP address?", "input": "", "output": ""}
    )  # empty output
    rows.insert(9, {"instruction": 42, "input": "", "output": "`echo 42`"})  # wrong type
    rows.insert(13, {"instruction": "How do I sort a file?", "input": ""})  # missing output
    (OUT / "sample_alpaca.json").write_text(
        json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )

    # CSV: the same format, one row per example (header is line 1).
    with (OUT / "sample_alpaca.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        for q, a in QA[:10]:
            writer.writerow([q, "", a])
        writer.writerow(["How do I show the date?", "", ""])  # empty output
        writer.writerow(["", "", "`uptime`"])  # empty instruction


def write_chatml() -> None:
    lines: list[str] = []
    for i, (q, a) in enumerate(QA[8:18]):
        messages: list[dict] = []
        if i % 2 == 0:
            messages.append({"role": "system", "content": SYSTEM})
        content: object = q if i % 3 else [{"type": "text", "text": q}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
        lines.append(dumps({"messages": messages}))
    lines.insert(
        2,
        dumps(
            {
                "messages": [
                    {"role": "user", "content": "How do I list users?"},
                    {"role": "user", "content": "On Linux."},
                    {"role": "assistant", "content": "`getent passwd`"},
                ]
            }
        ),
    )  # not alternating
    lines.insert(
        6, dumps({"messages": [{"role": "user", "content": "How do I reboot?"}]})
    )  # no model turn
    lines.insert(
        9,
        dumps(
            {
                "messages": [
                    {"role": "assistant", "content": "`sudo reboot`"},
                    {"role": "system", "content": SYSTEM},
                ]
            }
        ),
    )  # starts on the model side; system not first
    write_jsonl(OUT / "sample_chatml.jsonl", lines)


def write_parquet() -> None:
    rows = sharegpt_rows()[:10]
    rows.append(
        {
            "conversations": [
                {"from": "human", "value": "What does `cd -` do?"},
                {"from": "gpt", "value": ""},
            ]
        }
    )  # empty answer
    table = pa.table(
        {
            "conversations": [r["conversations"] for r in rows],
            "system": [r.get("system") for r in rows],
        }
    )
    pq.write_table(table, OUT / "sample_sharegpt.parquet")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_sharegpt()
    write_alpaca()
    write_chatml()
    write_parquet()
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
