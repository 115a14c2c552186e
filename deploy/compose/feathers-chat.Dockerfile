# syntax=docker/dockerfile:1
# The example Feathers app (examples/feathers-chat) with the @syncar/feathers plugin (clients/node),
# for the compose demo. Build context: the repository root; what it may see is listed in
# feathers-chat.Dockerfile.dockerignore (BuildKit reads it instead of the root .dockerignore).
ARG NODE_IMAGE=node:20-bookworm-slim
FROM ${NODE_IMAGE}

ENV NODE_ENV=production
WORKDIR /src/examples/feathers-chat

# The plugin's published files (its package.json "files"), then the app, where package.json
# names the plugin as file:../../clients/node.
COPY clients/node/package.json clients/node/index.js clients/node/index.mjs clients/node/index.d.ts \
     clients/node/README.md /src/clients/node/
COPY clients/node/lib /src/clients/node/lib
COPY examples/feathers-chat/package.json examples/feathers-chat/package-lock.json examples/feathers-chat/app.js \
     examples/feathers-chat/server.js examples/feathers-chat/cluster.js examples/feathers-chat/client.js ./
COPY examples/feathers-chat/public ./public

# The versions of the lock file, exactly; --install-links copies the plugin into node_modules rather
# than linking outside the app.
RUN npm ci --omit=dev --install-links --no-audit --no-fund \
    && npm cache clean --force

# The image's `node` user (uid 1000), not syncar's 10001: the compose file adds group 10001,
# which opens the 0660 socket.
USER 1000:1000
EXPOSE 3030
CMD ["node", "server.js"]
