from ptycli.cli.main import run

run()
