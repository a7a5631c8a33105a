from edge_seg.cli import run

run()
