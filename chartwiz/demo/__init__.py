"""The ChartWiz web demo (Streamlit): `app.py` is the page, `charts.py` and `tables.py` the logic it uses."""
