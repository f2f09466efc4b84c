FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
# torch==2.13.0 from PyPI's CPU index keeps the image small.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only python manage.py collectstatic --no-input
RUN useradd --create-home fedhealth && mkdir -p /app/var && chown -R fedhealth /app/var
USER fedhealth
EXPOSE 8000
