"""The differential test of the engine model against vLLM's own scheduler.

- workloads.py: the request streams (programs of turns), as thundersim Requests and as token ids;
- vllm_side.py: vLLM's v1 Scheduler + KVCacheManager on those streams, traced per iteration
  (runs in the vLLM's own Python; imports nothing of thundersim);
- sim_side.py: the same streams on thundersim's Scheduler, traced the same way;
- compare.py: runs both and compares every iteration (`thundersim conformance`);
- old_behaviours.py: the engine's old divergences, to patch in and see caught.
"""
