"""Running a mesh on one machine: the mesh file and the process supervisor behind `agentmesh up`."""
