"""The MCP reference of `bench/rpc.py`: an MCP stdio server (official `mcp` SDK) with one echo tool."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("bench-mcp-echo")


@server.tool()
async def echo(text: str, i: int) -> str:
    """Answer the text back."""
    return text


if __name__ == "__main__":
    server.run("stdio")
