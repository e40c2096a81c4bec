"""The pieces of the test node agent (``tests/cluster/node_agent.py``): the API client, the pod
spec's materialisation, the container runners, the probes and the test-controlled DNS."""
