"""What a run measured, one definition for every policy and both clocks.

Reading guide:
- `recorder.py`: the Recorder (step records, memory samples, STP cost terms) and table writing;
- `window.py`: the throughput window (horizon run with warm-up, or the whole run) and the
  checks that refuse to compare rows measured differently;
- `bound.py`: the paper's bound on unused memory (unused < c_min x dt per node), checked;
- `results.py`: RunResult and the summary of a finished run (`result_of`).
"""
