FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
# torch==2.13.0 from PyPI's CPU index keeps the image small.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
# collectstatic loads the production settings, which refuse a short key; this one is
# thrown away with the build step (the running container reads SECRET_KEY from .env).
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" python manage.py collectstatic --no-input
RUN useradd --create-home fedhealth && mkdir -p /app/var && chown -R fedhealth /app/var
USER fedhealth
EXPOSE 8000
