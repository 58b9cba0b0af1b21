"""`make demo` (`python -m rethinktiny.demo`): the paper's recipe end to end on a real pretrained
teacher, through the commands a cluster user runs.

- `pipeline`: the steps, each a folder of `--out` with the commands it ran (`manifest.json`);
- `report`: `report.md` and its plots, read from the finished step folders;
- `samples`: greedy continuations of every model through transformers.
"""
