"""Traces: the JSONL program format and everything that makes or reads it.

Reading guide:
- `schema.py`: ProgramSpec / StepSpec / EnvSpec and their validation (errors name file:line);
- `loader.py`: load, dump and scale trace files;
- `stats.py`: `thundersim trace stats`;
- `converters/`: real agent logs -> traces, one module per format;
- `workloads/`: generators of the bundled workloads, one module per workload, with the
  distributions they draw from (`distributions.py`) and the OpenHands agent loop two of them
  share (`codeact.py`).
"""
