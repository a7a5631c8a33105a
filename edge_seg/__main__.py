from edge_seg.cli import main

main()
