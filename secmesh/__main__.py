"""`python -m secmesh` runs the same CLI as the `secmesh` console script."""

from secmesh.cli.main import main

if __name__ == "__main__":
    main()
