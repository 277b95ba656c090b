# keyrotor operator image. Build: docker build -t keyrotor:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["keyrotor"]
CMD ["run"]
