"""``python -m pfms_client.data.movielens fetch [overrides]``: fetch, extract and convert MovieLens-100K."""

from .convert import main

main()
