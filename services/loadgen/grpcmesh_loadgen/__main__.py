from grpcmesh_loadgen.cli import app

app(prog_name="grpcmesh-loadgen")
