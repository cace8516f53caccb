"""Results of runs as a library that never loads torch (standard library, numpy, tabulate and,
for figures only, matplotlib).

- `layout`: the output-folder layout the scripts write and a run folder's status (checkpoint,
  finished training), which `python -m promptdiff.results status DIR` prints for the scripts;
- `record`: the one results.json schema the engine writes and every reader reads, and the
  "=> result" log block older runs left instead;
- `tables`: seed statistics and the paper-style tables (base2new, xd, dg, few_shot);
- `summary`: parse_test_res's mean and spread over the seeds of one experiment;
- `plots`: base-to-new bars and few-shot curves;
- `cli`: the flags that select results, shared by the table and plot command lines in tools/.
"""
