"""Browser pages of sites and datasets (routes in fedhealth/web_urls.py)."""

from .auth import favicon, home
from .dashboard import dashboard
from .privacy import dataset_privacy_budget
from .site import dataset_detail, dataset_download, site_home
from .upload import dataset_template, dataset_upload

__all__ = ["dashboard", "favicon", "dataset_detail", "dataset_download", "dataset_privacy_budget", "dataset_template", "dataset_upload", "home", "site_home"]
