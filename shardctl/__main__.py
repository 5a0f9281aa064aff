from shardctl.cli import main

main(prog_name="shardctl")
