"""`synctalk prepare`: video -> subject directory. One module per stage; pipeline.py runs them."""
