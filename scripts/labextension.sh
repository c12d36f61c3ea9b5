#!/usr/bin/env bash
# The JupyterLab extension, built from labextension/ (TypeScript) into
# nbcontainer_kernel/labextension/ (what the wheel ships under
# share/jupyter/labextensions/nbcontainer-kernel), against the JupyterLab installed in the
# virtualenv, and linked into that virtualenv as `jupyter labextension develop` does.
# Built again only when its sources changed (their digest is stamped beside the output).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
cd "$here/.."

venv="${VENV:-.venv}"
out="nbcontainer_kernel/labextension"
stamp="$out/.built-from"
want="$(cat labextension/package.json labextension/package-lock.json labextension/tsconfig.json \
  labextension/src/* labextension/style/* | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$out/package.json" ]; then
  log "the JupyterLab extension is built ($out, sources unchanged)"
else
  command -v npm >/dev/null || apt_install nodejs npm
  log "building the JupyterLab extension ($(node --version)) into $out"
  (
    cd labextension
    [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] \
      || npm ci --no-audit --no-fund --loglevel=error
    npx tsc
    # The core packages the extension shares with JupyterLab: those of the installed Lab.
    core="$("../$venv/bin/python" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging", "package.json"))')"
    PATH="$(cd "../$venv/bin" && pwd):$PATH" jupyter-builder build --core-package-file "$core" . >/dev/null
  )
  echo "$want" > "$stamp"
fi

# The venv's copy (an editable install copies it once) becomes a link to the build.
link="$venv/share/jupyter/labextensions/nbcontainer-kernel"
if [ ! -L "$link" ]; then
  mkdir -p "$(dirname "$link")"
  rm -rf "$link"
  ln -s "$(pwd)/$out" "$link"
fi
